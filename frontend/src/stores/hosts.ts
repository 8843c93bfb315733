/**
 * The set of host connections on the page, one per daemon base URL, shared by every
 * widget that shows that host. Also pauses streaming while the tab is hidden (the
 * browser would throttle it anyway) and backfills the gap when it is shown again.
 */
import { shallowReactive } from 'vue'
import { HostConnection } from './host'

export class Hosts {
  readonly conns = shallowReactive(new Map<string, HostConnection>())
  private hiddenTimer: ReturnType<typeof setTimeout> | null = null
  private onVisibility = () => this.visibilityChanged()

  constructor(private windowS: number) {}

  /** The connection to `base`, created and started on first use. */
  get(base: string): HostConnection {
    let c = this.conns.get(base)
    if (!c) {
      c = new HostConnection(base, this.windowS)
      this.conns.set(base, c)
      c.start()
    }
    return c
  }

  /** Keep exactly these hosts connected. */
  keep(bases: string[]): void {
    for (const b of bases) this.get(b)
    for (const [b, c] of this.conns) {
      if (!bases.includes(b)) {
        c.stop()
        this.conns.delete(b)
      }
    }
  }

  setWindow(seconds: number): void {
    this.windowS = seconds
    for (const c of this.conns.values()) c.setWindow(seconds)
  }

  setContainer(name: string): void {
    for (const c of this.conns.values()) c.setContainer(name)
  }

  /** Start watching page visibility; returns the function that stops it. */
  watchVisibility(graceMs = 10_000): () => void {
    document.addEventListener('visibilitychange', this.onVisibility)
    this.graceMs = graceMs
    return () => document.removeEventListener('visibilitychange', this.onVisibility)
  }

  private graceMs = 10_000

  private visibilityChanged(): void {
    if (document.visibilityState === 'hidden') {
      // A short glance at another tab should not cost a reconnect.
      this.hiddenTimer = setTimeout(() => {
        for (const c of this.conns.values()) c.suspend()
      }, this.graceMs)
    } else {
      if (this.hiddenTimer) clearTimeout(this.hiddenTimer)
      this.hiddenTimer = null
      for (const c of this.conns.values()) c.resume()
    }
  }

  stopAll(): void {
    for (const c of this.conns.values()) c.stop()
    this.conns.clear()
  }
}
