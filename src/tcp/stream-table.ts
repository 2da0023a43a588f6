// The open streams of one connection, by stream id: an open-addressing hash table (Fibonacci
// hashing, linear probing, backward-shift deletion) whose slot array is replaced only when it
// grows. A Map churned by one set and one delete per request keeps reallocating its table; the
// dead tables, once promoted, still point at young streams, so every scavenge copied whole
// generations of finished calls (several MB per scavenge, up to a third of the client's time).
// Here a finished stream's slot is cleared at once and no table is thrown away.
//
// Complexity: get/add/delete O(1) expected (load factor <= 1/2); values() O(capacity).

export class StreamTable<T extends { readonly id: number }> {
  private slots: Array<T | undefined>;
  private bits: number;
  /** Streams in the table. */
  size = 0;

  constructor(initialBits = 6) {
    this.bits = initialBits;
    this.slots = new Array<T | undefined>(1 << initialBits).fill(undefined);
  }

  get(id: number): T | undefined {
    const slots = this.slots;
    const mask = slots.length - 1;
    for (let i = this.home(id); ; i = (i + 1) & mask) {
      const s = slots[i];
      if (s === undefined || s.id === id) return s;
    }
  }

  has(id: number): boolean {
    return this.get(id) !== undefined;
  }

  /** Adds a stream whose id is not in the table. */
  add(stream: T): void {
    if ((this.size + 1) * 2 > this.slots.length) this.grow();
    this.place(stream);
    this.size++;
  }

  /** Removes the stream with this id; false if there was none. */
  delete(id: number): boolean {
    const slots = this.slots;
    const mask = slots.length - 1;
    let i = this.home(id);
    for (;;) {
      const s = slots[i];
      if (s === undefined) return false;
      if (s.id === id) break;
      i = (i + 1) & mask;
    }
    slots[i] = undefined;
    this.size--;
    // Shift later members of the probe run back so no lookup stops early at the new hole.
    for (let j = (i + 1) & mask; ; j = (j + 1) & mask) {
      const s = slots[j];
      if (s === undefined) return true;
      const k = this.home(s.id);
      const stays = i <= j ? i < k && k <= j : i < k || k <= j;
      if (!stays) {
        slots[i] = s;
        slots[j] = undefined;
        i = j;
      }
    }
  }

  /** A snapshot of the streams (safe to delete from the table while going through it). */
  values(): T[] {
    const out: T[] = [];
    for (const s of this.slots) if (s !== undefined) out.push(s);
    return out;
  }

  clear(): void {
    this.slots.fill(undefined);
    this.size = 0;
  }

  private home(id: number): number {
    return Math.imul(id, 0x9e3779b1) >>> (32 - this.bits);
  }

  private place(stream: T): void {
    const slots = this.slots;
    const mask = slots.length - 1;
    let i = this.home(stream.id);
    while (slots[i] !== undefined) i = (i + 1) & mask;
    slots[i] = stream;
  }

  private grow(): void {
    const old = this.slots;
    this.bits++;
    this.slots = new Array<T | undefined>(1 << this.bits).fill(undefined);
    for (const s of old) if (s !== undefined) this.place(s);
  }
}
