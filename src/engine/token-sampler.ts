// Deterministic output tokens. Each request gets its own seeded PRNG (seeded from the engine seed
// and the prompt's token ids), so the same prompt yields the same output on any worker: a decode
// worker continuing a remote prefill produces exactly what an aggregated worker would have.
// Ids are drawn from a fixed list of o200k_base tokens for common English words (each a single
// token with a leading space), plus '.' and ',', so the router's tokenizer decodes readable text.

import { seededRng } from '../util/seeded-rng.js';

/** o200k_base ids of ' the', ' of', ' and', ... (single-token words), then ',' and '.'. */
export const WORD_TOKEN_IDS: readonly number[] = [
  290, 328, 326, 316, 306, 261, 382, 484, 395, 480, 472, 673, 483, 413, 656, 402, 625, 501, 495, 553, 503,
  1232, 591, 540, 1118, 889, 679, 448, 1023, 481, 1504, 1335, 1770, 1354, 1001, 722, 581, 1043, 853, 1339,
  538, 945, 1261, 738, 1481, 1218, 813, 860, 665, 842, 869, 1236, 1511, 1373, 1606, 1058, 1572, 1617, 2059,
  1078, 1273, 1920, 1577, 2023, 1299, 1217, 620, 1879, 1340, 1815, 1062, 1072, 621, 1954, 1645, 2238, 1991,
  1665, 1934, 2452, 2242, 11, 13,
];

/** FNV-1a over the prompt ids, mixed with the engine seed: the per-request PRNG seed. */
export function promptSeed(tokenIds: readonly number[], engineSeed: number): number {
  let h = (0x811c9dc5 ^ engineSeed) >>> 0;
  for (const id of tokenIds) {
    h = Math.imul(h ^ (id & 0xffff), 0x01000193) >>> 0;
    h = Math.imul(h ^ (id >>> 16), 0x01000193) >>> 0;
  }
  return h;
}

/** Draws word tokens from the project's seeded PRNG; one closure of state per request. */
export class TokenSampler {
  private readonly random: () => number;

  constructor(seed: number) {
    this.random = seededRng(seed);
  }

  next(): number {
    return WORD_TOKEN_IDS[Math.floor(this.random() * WORD_TOKEN_IDS.length)]!;
  }
}
