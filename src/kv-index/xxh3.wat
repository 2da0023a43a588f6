;; XXH3-64 (xxHash 0.8 algorithm, seeded) for kvroute's block hashing (CONTRACT.md §4).
;;
;; Hand-written so that a whole prompt is hashed in ONE call from JS: the per-call boundary
;; crossing, not the arithmetic, dominates when each block is only 64 bytes. `hash_blocks` hashes
;; every full block of a token buffer and (optionally) chains the sequence hashes.
;;
;; Assembled by scripts/gen-xxh3-wasm.ts into src/kv-index/xxh3-wasm.generated.ts; edit this file,
;; then run `node --import tsx scripts/gen-xxh3-wasm.ts` (a test fails if the two disagree).
;;
;; Memory layout (little-endian, like XXH3's readLE64):
;;   [0, 192)      the default 192-byte secret (kSecret)
;;   [256, 448)    the secret derived from the seed (used by inputs > 240 bytes)
;;   [512, 576)    the eight accumulators of the long-input path
;;   [1024, ...)   free for the caller (token buffer and outputs); JS grows memory as needed

(module
  (memory (export "memory") 1)

  (global $seed (mut i64) (i64.const 0))
  ;; Seeded bitflips of the 9..16-byte path, fixed per seed (the sequence-hash step uses it).
  (global $bf1 (mut i64) (i64.const 0))
  (global $bf2 (mut i64) (i64.const 0))
  ;; First 64 bytes of the seeded secret: the 64-byte fast path reads them without memory loads.
  (global $k0 (mut i64) (i64.const 0))
  (global $k1 (mut i64) (i64.const 0))
  (global $k2 (mut i64) (i64.const 0))
  (global $k3 (mut i64) (i64.const 0))
  (global $k4 (mut i64) (i64.const 0))
  (global $k5 (mut i64) (i64.const 0))
  (global $k6 (mut i64) (i64.const 0))
  (global $k7 (mut i64) (i64.const 0))

  (data (i32.const 0)
    "\b8\fe\6c\39\23\a4\4b\be\7c\01\81\2c\f7\21\ad\1c"
    "\de\d4\6d\e9\83\90\97\db\72\40\a4\a4\b7\b3\67\1f"
    "\cb\79\e6\4e\cc\c0\e5\78\82\5a\d0\7d\cc\ff\72\21"
    "\b8\08\46\74\f7\43\24\8e\e0\35\90\e6\81\3a\26\4c"
    "\3c\28\52\bb\91\c3\00\cb\88\d0\65\8b\1b\53\2e\a3"
    "\71\64\48\97\a2\0d\f9\4e\38\19\ef\46\a9\de\ac\d8"
    "\a8\fa\76\3f\e3\9c\34\3f\f9\dc\bb\c7\c7\0b\4f\1d"
    "\8a\51\e0\4b\cd\b4\59\31\c8\9f\7e\c9\d9\78\73\64"
    "\ea\c5\ac\83\34\d3\eb\c3\c5\81\a0\ff\fa\13\63\eb"
    "\17\0d\dd\51\b7\f0\da\49\d3\16\55\26\29\d4\68\9e"
    "\2b\16\be\58\7d\47\a1\fc\8f\f8\b8\d1\7a\d0\31\ce"
    "\45\cb\3a\8f\95\16\04\28\af\d7\fb\ca\bb\4b\40\7e")

  ;; 64x64 -> 128-bit product folded to 64 bits (low ^ high). WebAssembly has no widening
  ;; multiply, so it is built from four 32x32 products; `cross` cannot overflow.
  (func $fold (param $a i64) (param $b i64) (result i64)
    (local $alo i64) (local $ahi i64) (local $blo i64) (local $bhi i64)
    (local $ll i64) (local $hl i64) (local $cross i64)
    (local.set $alo (i64.and (local.get $a) (i64.const 0xffffffff)))
    (local.set $ahi (i64.shr_u (local.get $a) (i64.const 32)))
    (local.set $blo (i64.and (local.get $b) (i64.const 0xffffffff)))
    (local.set $bhi (i64.shr_u (local.get $b) (i64.const 32)))
    (local.set $ll (i64.mul (local.get $alo) (local.get $blo)))
    (local.set $hl (i64.mul (local.get $ahi) (local.get $blo)))
    (local.set $cross
      (i64.add
        (i64.add (i64.shr_u (local.get $ll) (i64.const 32)) (i64.and (local.get $hl) (i64.const 0xffffffff)))
        (i64.mul (local.get $alo) (local.get $bhi))))
    (i64.xor
      (i64.or (i64.shl (local.get $cross) (i64.const 32)) (i64.and (local.get $ll) (i64.const 0xffffffff)))
      (i64.add
        (i64.add (i64.shr_u (local.get $hl) (i64.const 32)) (i64.shr_u (local.get $cross) (i64.const 32)))
        (i64.mul (local.get $ahi) (local.get $bhi)))))

  (func $bswap64 (param $x i64) (result i64)
    (local.set $x
      (i64.or
        (i64.shl (i64.and (local.get $x) (i64.const 0x00ff00ff00ff00ff)) (i64.const 8))
        (i64.and (i64.shr_u (local.get $x) (i64.const 8)) (i64.const 0x00ff00ff00ff00ff))))
    (local.set $x
      (i64.or
        (i64.shl (i64.and (local.get $x) (i64.const 0x0000ffff0000ffff)) (i64.const 16))
        (i64.and (i64.shr_u (local.get $x) (i64.const 16)) (i64.const 0x0000ffff0000ffff))))
    (i64.rotl (local.get $x) (i64.const 32)))

  (func $avalanche (param $h i64) (result i64)
    (local.set $h (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 37))))
    (local.set $h (i64.mul (local.get $h) (i64.const 0x165667919e3779f9)))
    (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 32))))

  (func $xxh64_avalanche (param $h i64) (result i64)
    (local.set $h (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 33))))
    (local.set $h (i64.mul (local.get $h) (i64.const 0xc2b2ae3d27d4eb4f)))
    (local.set $h (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 29))))
    (local.set $h (i64.mul (local.get $h) (i64.const 0x165667b19e3779f9)))
    (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 32))))

  (func $rrmxmx (param $h i64) (param $len i64) (result i64)
    (local.set $h
      (i64.xor (local.get $h)
        (i64.xor (i64.rotl (local.get $h) (i64.const 49)) (i64.rotl (local.get $h) (i64.const 24)))))
    (local.set $h (i64.mul (local.get $h) (i64.const 0x9fb21c651e98df25)))
    (local.set $h
      (i64.xor (local.get $h) (i64.add (i64.shr_u (local.get $h) (i64.const 35)) (local.get $len))))
    (local.set $h (i64.mul (local.get $h) (i64.const 0x9fb21c651e98df25)))
    (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 28))))

  ;; XXH3_mix16B over the default secret at any (unaligned) offset, keyed by the seed.
  (func $mix16 (param $in i32) (param $sec i32) (result i64)
    (call $fold
      (i64.xor (i64.load (local.get $in)) (i64.add (i64.load (local.get $sec)) (global.get $seed)))
      (i64.xor (i64.load offset=8 (local.get $in)) (i64.sub (i64.load offset=8 (local.get $sec)) (global.get $seed)))))

  (func $len_1to3 (param $p i32) (param $len i32) (result i64)
    (local $combined i32)
    (local.set $combined
      (i32.or
        (i32.or
          (i32.shl (i32.load8_u (local.get $p)) (i32.const 16))
          (i32.shl (i32.load8_u (i32.add (local.get $p) (i32.shr_u (local.get $len) (i32.const 1)))) (i32.const 24)))
        (i32.or
          (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $len)) (i32.const 1)))
          (i32.shl (local.get $len) (i32.const 8)))))
    (call $xxh64_avalanche
      (i64.xor
        (i64.extend_i32_u (local.get $combined))
        (i64.add
          (i64.extend_i32_u (i32.xor (i32.load (i32.const 0)) (i32.load (i32.const 4))))
          (global.get $seed)))))

  (func $len_4to8 (param $p i32) (param $len i32) (result i64)
    (local $seed i64)
    (local.set $seed
      (i64.xor (global.get $seed)
        (call $bswap64 (i64.and (global.get $seed) (i64.const 0xffffffff)))))
    (call $rrmxmx
      (i64.xor
        (i64.add
          (i64.load32_u (i32.sub (i32.add (local.get $p) (local.get $len)) (i32.const 4)))
          (i64.shl (i64.load32_u (local.get $p)) (i64.const 32)))
        (i64.sub
          (i64.xor (i64.load (i32.const 8)) (i64.load (i32.const 16)))
          (local.get $seed)))
      (i64.extend_i32_u (local.get $len))))

  ;; 9..16 bytes given as the first and last 8 bytes (they overlap when len < 16).
  (func $len_9to16 (param $first i64) (param $last i64) (param $len i64) (result i64)
    (local $lo i64) (local $hi i64)
    (local.set $lo (i64.xor (local.get $first) (global.get $bf1)))
    (local.set $hi (i64.xor (local.get $last) (global.get $bf2)))
    (call $avalanche
      (i64.add
        (i64.add (local.get $len) (call $bswap64 (local.get $lo)))
        (i64.add (local.get $hi) (call $fold (local.get $lo) (local.get $hi))))))

  (func $len_17to128 (param $p i32) (param $len i32) (result i64)
    (local $acc i64) (local $end i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (local.set $acc (i64.mul (i64.extend_i32_u (local.get $len)) (i64.const 0x9e3779b185ebca87)))
    (if (i32.gt_u (local.get $len) (i32.const 32))
      (then
        (if (i32.gt_u (local.get $len) (i32.const 64))
          (then
            (if (i32.gt_u (local.get $len) (i32.const 96))
              (then
                (local.set $acc (i64.add (local.get $acc)
                  (call $mix16 (i32.add (local.get $p) (i32.const 48)) (i32.const 96))))
                (local.set $acc (i64.add (local.get $acc)
                  (call $mix16 (i32.sub (local.get $end) (i32.const 64)) (i32.const 112))))))
            (local.set $acc (i64.add (local.get $acc)
              (call $mix16 (i32.add (local.get $p) (i32.const 32)) (i32.const 64))))
            (local.set $acc (i64.add (local.get $acc)
              (call $mix16 (i32.sub (local.get $end) (i32.const 48)) (i32.const 80))))))
        (local.set $acc (i64.add (local.get $acc)
          (call $mix16 (i32.add (local.get $p) (i32.const 16)) (i32.const 32))))
        (local.set $acc (i64.add (local.get $acc)
          (call $mix16 (i32.sub (local.get $end) (i32.const 32)) (i32.const 48))))))
    (local.set $acc (i64.add (local.get $acc) (call $mix16 (local.get $p) (i32.const 0))))
    (local.set $acc (i64.add (local.get $acc)
      (call $mix16 (i32.sub (local.get $end) (i32.const 16)) (i32.const 16))))
    (call $avalanche (local.get $acc)))

  (func $len_129to240 (param $p i32) (param $len i32) (result i64)
    (local $acc i64) (local $accEnd i64) (local $i i32) (local $rounds i32)
    (local.set $acc (i64.mul (i64.extend_i32_u (local.get $len)) (i64.const 0x9e3779b185ebca87)))
    (local.set $i (i32.const 0))
    (loop $first8
      (local.set $acc (i64.add (local.get $acc)
        (call $mix16
          (i32.add (local.get $p) (i32.shl (local.get $i) (i32.const 4)))
          (i32.shl (local.get $i) (i32.const 4)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $first8 (i32.lt_u (local.get $i) (i32.const 8))))
    ;; secret offset 136 - 17: XXH3_SECRET_SIZE_MIN - XXH3_MIDSIZE_LASTOFFSET
    (local.set $accEnd
      (call $mix16 (i32.sub (i32.add (local.get $p) (local.get $len)) (i32.const 16)) (i32.const 119)))
    (local.set $acc (call $avalanche (local.get $acc)))
    (local.set $rounds (i32.shr_u (local.get $len) (i32.const 4)))
    (block $done
      (loop $rest
        (br_if $done (i32.ge_u (local.get $i) (local.get $rounds)))
        ;; secret offset 16 * (i - 8) + 3 (XXH3_MIDSIZE_STARTOFFSET)
        (local.set $accEnd (i64.add (local.get $accEnd)
          (call $mix16
            (i32.add (local.get $p) (i32.shl (local.get $i) (i32.const 4)))
            (i32.add (i32.shl (i32.sub (local.get $i) (i32.const 8)) (i32.const 4)) (i32.const 3)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $rest)))
    (call $avalanche (i64.add (local.get $acc) (local.get $accEnd))))

  ;; One 64-byte stripe into the accumulators at 512; $sec points into the seeded secret.
  (func $accumulate512 (param $in i32) (param $sec i32)
    (local $i i32) (local $v i64) (local $k i64) (local $a i32)
    (loop $lanes
      (local.set $v (i64.load (i32.add (local.get $in) (i32.shl (local.get $i) (i32.const 3)))))
      (local.set $k (i64.xor (local.get $v)
        (i64.load (i32.add (local.get $sec) (i32.shl (local.get $i) (i32.const 3))))))
      ;; acc[i ^ 1] += data
      (local.set $a (i32.add (i32.const 512) (i32.shl (i32.xor (local.get $i) (i32.const 1)) (i32.const 3))))
      (i64.store (local.get $a) (i64.add (i64.load (local.get $a)) (local.get $v)))
      ;; acc[i] += lo32(key) * hi32(key)
      (local.set $a (i32.add (i32.const 512) (i32.shl (local.get $i) (i32.const 3))))
      (i64.store (local.get $a)
        (i64.add (i64.load (local.get $a))
          (i64.mul (i64.and (local.get $k) (i64.const 0xffffffff)) (i64.shr_u (local.get $k) (i64.const 32)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $lanes (i32.lt_u (local.get $i) (i32.const 8)))))

  (func $scramble (param $sec i32)
    (local $i i32) (local $a i32) (local $v i64)
    (loop $lanes
      (local.set $a (i32.add (i32.const 512) (i32.shl (local.get $i) (i32.const 3))))
      (local.set $v (i64.load (local.get $a)))
      (local.set $v (i64.xor (local.get $v) (i64.shr_u (local.get $v) (i64.const 47))))
      (local.set $v (i64.xor (local.get $v)
        (i64.load (i32.add (local.get $sec) (i32.shl (local.get $i) (i32.const 3))))))
      (i64.store (local.get $a) (i64.mul (local.get $v) (i64.const 0x9e3779b1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $lanes (i32.lt_u (local.get $i) (i32.const 8)))))

  ;; Inputs over 240 bytes: stripes of 64 bytes, blocks of 16 stripes, seeded secret at 256.
  (func $len_long (param $p i32) (param $len i32) (result i64)
    (local $nbBlocks i32) (local $n i32) (local $s i32) (local $nbStripes i32) (local $base i32)
    (local $i i32) (local $result i64)
    (i64.store (i32.const 512) (i64.const 0xc2b2ae3d))
    (i64.store (i32.const 520) (i64.const 0x9e3779b185ebca87))
    (i64.store (i32.const 528) (i64.const 0xc2b2ae3d27d4eb4f))
    (i64.store (i32.const 536) (i64.const 0x165667b19e3779f9))
    (i64.store (i32.const 544) (i64.const 0x85ebca77c2b2ae63))
    (i64.store (i32.const 552) (i64.const 0x85ebca77))
    (i64.store (i32.const 560) (i64.const 0x27d4eb2f165667c5))
    (i64.store (i32.const 568) (i64.const 0x9e3779b1))
    (local.set $nbBlocks (i32.div_u (i32.sub (local.get $len) (i32.const 1)) (i32.const 1024)))
    (block $blocksDone
      (loop $blocks
        (br_if $blocksDone (i32.ge_u (local.get $n) (local.get $nbBlocks)))
        (local.set $base (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 10))))
        (local.set $s (i32.const 0))
        (loop $stripes
          (call $accumulate512
            (i32.add (local.get $base) (i32.shl (local.get $s) (i32.const 6)))
            (i32.add (i32.const 256) (i32.shl (local.get $s) (i32.const 3))))
          (local.set $s (i32.add (local.get $s) (i32.const 1)))
          (br_if $stripes (i32.lt_u (local.get $s) (i32.const 16))))
        (call $scramble (i32.const 384))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $blocks)))
    (local.set $base (i32.add (local.get $p) (i32.shl (local.get $nbBlocks) (i32.const 10))))
    (local.set $nbStripes
      (i32.shr_u
        (i32.sub (i32.sub (local.get $len) (i32.const 1)) (i32.shl (local.get $nbBlocks) (i32.const 10)))
        (i32.const 6)))
    (local.set $s (i32.const 0))
    (block $lastDone
      (loop $last
        (br_if $lastDone (i32.ge_u (local.get $s) (local.get $nbStripes)))
        (call $accumulate512
          (i32.add (local.get $base) (i32.shl (local.get $s) (i32.const 6)))
          (i32.add (i32.const 256) (i32.shl (local.get $s) (i32.const 3))))
        (local.set $s (i32.add (local.get $s) (i32.const 1)))
        (br $last)))
    ;; last stripe, secret offset 192 - 64 - 7 (XXH_SECRET_LASTACC_START)
    (call $accumulate512
      (i32.sub (i32.add (local.get $p) (local.get $len)) (i32.const 64))
      (i32.const 377))
    ;; merge, secret offset 11 (XXH_SECRET_MERGEACCS_START)
    (local.set $result (i64.mul (i64.extend_i32_u (local.get $len)) (i64.const 0x9e3779b185ebca87)))
    (loop $merge
      (local.set $result (i64.add (local.get $result)
        (call $fold
          (i64.xor
            (i64.load (i32.add (i32.const 512) (i32.shl (local.get $i) (i32.const 4))))
            (i64.load (i32.add (i32.const 267) (i32.shl (local.get $i) (i32.const 4)))))
          (i64.xor
            (i64.load (i32.add (i32.const 520) (i32.shl (local.get $i) (i32.const 4))))
            (i64.load (i32.add (i32.const 275) (i32.shl (local.get $i) (i32.const 4))))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $merge (i32.lt_u (local.get $i) (i32.const 4))))
    (call $avalanche (local.get $result)))

  ;; XXH3-64 of any length with the current seed.
  (func $hash (param $p i32) (param $len i32) (result i64)
    (if (i32.le_u (local.get $len) (i32.const 16))
      (then
        (if (i32.gt_u (local.get $len) (i32.const 8))
          (then
            (return (call $len_9to16
              (i64.load (local.get $p))
              (i64.load (i32.sub (i32.add (local.get $p) (local.get $len)) (i32.const 8)))
              (i64.extend_i32_u (local.get $len))))))
        (if (i32.ge_u (local.get $len) (i32.const 4))
          (then (return (call $len_4to8 (local.get $p) (local.get $len)))))
        (if (i32.gt_u (local.get $len) (i32.const 0))
          (then (return (call $len_1to3 (local.get $p) (local.get $len)))))
        (return (call $xxh64_avalanche
          (i64.xor (global.get $seed) (i64.xor (i64.load (i32.const 56)) (i64.load (i32.const 64))))))))
    (if (i32.le_u (local.get $len) (i32.const 128))
      (then (return (call $len_17to128 (local.get $p) (local.get $len)))))
    (if (i32.le_u (local.get $len) (i32.const 240))
      (then (return (call $len_129to240 (local.get $p) (local.get $len)))))
    (call $len_long (local.get $p) (local.get $len)))

  ;; The 64-byte case (block size 16 tokens) unrolled against the cached seeded secret words.
  (func $hash64 (param $p i32) (result i64)
    (call $avalanche
      (i64.add
        (i64.add
          (i64.const 0x8dde6c617af2a1c0) ;; 64 * PRIME64_1 mod 2^64
          (i64.add
            (call $fold
              (i64.xor (i64.load (local.get $p)) (global.get $k0))
              (i64.xor (i64.load offset=8 (local.get $p)) (global.get $k1)))
            (call $fold
              (i64.xor (i64.load offset=48 (local.get $p)) (global.get $k2))
              (i64.xor (i64.load offset=56 (local.get $p)) (global.get $k3)))))
        (i64.add
          (call $fold
            (i64.xor (i64.load offset=16 (local.get $p)) (global.get $k4))
            (i64.xor (i64.load offset=24 (local.get $p)) (global.get $k5)))
          (call $fold
            (i64.xor (i64.load offset=32 (local.get $p)) (global.get $k6))
            (i64.xor (i64.load offset=40 (local.get $p)) (global.get $k7)))))))

  ;; Sets the seed: derives the seeded secret (XXH3_initCustomSecret) and the cached keys.
  (func (export "init") (param $seedLo i32) (param $seedHi i32)
    (local $i i32)
    (global.set $seed
      (i64.or (i64.extend_i32_u (local.get $seedLo)) (i64.shl (i64.extend_i32_u (local.get $seedHi)) (i64.const 32))))
    (loop $words
      (i64.store (i32.add (i32.const 256) (local.get $i))
        (i64.add (i64.load (local.get $i)) (global.get $seed)))
      (i64.store (i32.add (i32.const 264) (local.get $i))
        (i64.sub (i64.load offset=8 (local.get $i)) (global.get $seed)))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br_if $words (i32.lt_u (local.get $i) (i32.const 192))))
    (global.set $bf1
      (i64.add (i64.xor (i64.load (i32.const 24)) (i64.load (i32.const 32))) (global.get $seed)))
    (global.set $bf2
      (i64.sub (i64.xor (i64.load (i32.const 40)) (i64.load (i32.const 48))) (global.get $seed)))
    (global.set $k0 (i64.load (i32.const 256)))
    (global.set $k1 (i64.load (i32.const 264)))
    (global.set $k2 (i64.load (i32.const 272)))
    (global.set $k3 (i64.load (i32.const 280)))
    (global.set $k4 (i64.load (i32.const 288)))
    (global.set $k5 (i64.load (i32.const 296)))
    (global.set $k6 (i64.load (i32.const 304)))
    (global.set $k7 (i64.load (i32.const 312))))

  ;; XXH3-64 of memory [p, p + len): for tests and odd sizes.
  (func (export "hash_bytes") (param $p i32) (param $len i32) (result i64)
    (call $hash (local.get $p) (local.get $len)))

  ;; Hashes `blocks` consecutive blocks of `blockBytes` bytes starting at `src`, writing the local
  ;; hashes as u64 to `outLocal`; when `outSeq` is not 0 also writes the chained sequence hashes
  ;; (seq[0] = local[0], seq[i] = XXH3(seq[i-1] || local[i])) there.
  (func (export "hash_blocks")
    (param $src i32) (param $blocks i32) (param $blockBytes i32) (param $outLocal i32) (param $outSeq i32)
    (local $i i32) (local $p i32) (local $h i64) (local $prev i64)
    (local.set $p (local.get $src))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $blocks)))
        (if (i32.eq (local.get $blockBytes) (i32.const 64))
          (then (local.set $h (call $hash64 (local.get $p))))
          (else (local.set $h (call $hash (local.get $p) (local.get $blockBytes)))))
        (i64.store (i32.add (local.get $outLocal) (i32.shl (local.get $i) (i32.const 3))) (local.get $h))
        (if (local.get $outSeq)
          (then
            (if (local.get $i)
              (then (local.set $prev (call $len_9to16 (local.get $prev) (local.get $h) (i64.const 16))))
              (else (local.set $prev (local.get $h))))
            (i64.store (i32.add (local.get $outSeq) (i32.shl (local.get $i) (i32.const 3))) (local.get $prev))))
        (local.set $p (i32.add (local.get $p) (local.get $blockBytes)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each))))
)
