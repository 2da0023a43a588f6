// Worker ids are strings in the router ("w-3"); the tree's holder bitsets index workers by small
// ints. Slots of removed workers are reused (lowest first) so the bitsets stay narrow.

export class WorkerSlots {
  readonly slotOf = new Map<string, number>();
  readonly idOfSlot: (string | undefined)[] = [];
  private readonly free: number[] = [];

  get size(): number {
    return this.slotOf.size;
  }

  /** The worker's slot, assigning one on first sight. */
  acquire(workerId: string): number {
    let slot = this.slotOf.get(workerId);
    if (slot === undefined) {
      slot = this.free.length > 0 ? this.free.pop()! : this.idOfSlot.length;
      this.slotOf.set(workerId, slot);
      this.idOfSlot[slot] = workerId;
    }
    return slot;
  }

  release(workerId: string): number | undefined {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return undefined;
    this.slotOf.delete(workerId);
    this.idOfSlot[slot] = undefined;
    this.free.push(slot);
    this.free.sort((a, b) => b - a);
    return slot;
  }
}
