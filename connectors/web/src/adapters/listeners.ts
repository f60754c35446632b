/** Listener bookkeeping so `destroy()` removes exactly what was added. */

type Target = {
  addEventListener(type: string, listener: (event: any) => void, options?: any): void;
  removeEventListener(type: string, listener: (event: any) => void, options?: any): void;
};

export class Listeners {
  private readonly added: { target: Target; type: string; listener: (event: any) => void }[] = [];

  /** Adds `listener` wrapped so that nothing it throws reaches the page or the player. */
  on(target: Target | undefined | null, type: string, listener: (event: any) => void): void {
    if (!target || typeof target.addEventListener !== 'function') return;
    const guarded = (event: any) => {
      try {
        listener(event);
      } catch {
        /* never throw into the page */
      }
    };
    try {
      target.addEventListener(type, guarded);
      this.added.push({ target, type, listener: guarded });
    } catch {
      /* a target that refuses listeners is simply not observed */
    }
  }

  removeAll(): void {
    for (const { target, type, listener } of this.added.splice(0)) {
      try {
        target.removeEventListener(type, listener);
      } catch {
        /* ignore */
      }
    }
  }
}
