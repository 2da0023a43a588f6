// The scheduler's seeded random source is the project's one PRNG (src/util/seeded-rng.ts).

export { seededRng } from '../../util/seeded-rng.js';
