"""numpy's `SeedSequence(entropy).generate_state(words)` for many entropies at once.

A training epoch derives one seed per sample (`leafnet.data.loaders.sample_seed`); a SeedSequence object per
sample costs microseconds of Python each, which the training process pays inside its steps when it builds
the batches itself. The pool's hashing is the same sequence of uint32 operations for every entropy of a
given length (the hash constants advance with the count of calls, not with the data), so it runs here as
array operations over all of them. It follows numpy's `bit_generator.pyx` for the entropies leafnet passes:
words below 2**32 (one uint32 each), no spawn key, the default pool of four words.
"""

from __future__ import annotations

import numpy as np

POOL_SIZE = 4
INIT_A, MULT_A = 0x43B0D7E5, 0x931E8875
INIT_B, MULT_B = 0x8B51F9DD, 0x58F38DED
MIX_MULT_L, MIX_MULT_R = 0xCA01F9DD, 0x4973F715
XSHIFT = np.uint32(16)
WORD = 0xFFFFFFFF


def generate_states(entropy: np.ndarray, words: int) -> np.ndarray:
    """(n, k) entropy words below 2**32 -> (n, words) uint32: row i is
    `np.random.SeedSequence(entropy[i].tolist()).generate_state(words, np.uint32)`."""
    entropy = np.asarray(entropy)
    if entropy.ndim != 2 or (entropy.size and (entropy.min() < 0 or entropy.max() > WORD)):
        raise ValueError("entropy must be an (n, k) array of words in [0, 2**32)")
    entropy = entropy.astype(np.uint32)
    count, length = entropy.shape
    hash_const = INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * MULT_A) & WORD
        value = value * np.uint32(hash_const)
        return value ^ (value >> XSHIFT)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(MIX_MULT_L) * x - np.uint32(MIX_MULT_R) * y
        return result ^ (result >> XSHIFT)

    zeros = np.zeros(count, dtype=np.uint32)
    pool = [hashmix(entropy[:, i] if i < length else zeros) for i in range(POOL_SIZE)]
    for source in range(POOL_SIZE):
        for target in range(POOL_SIZE):
            if source != target:
                pool[target] = mix(pool[target], hashmix(pool[source]))
    for source in range(POOL_SIZE, length):
        for target in range(POOL_SIZE):
            pool[target] = mix(pool[target], hashmix(entropy[:, source]))
    states = np.empty((count, words), dtype=np.uint32)
    hash_const = INIT_B
    for i in range(words):
        value = pool[i % POOL_SIZE] ^ np.uint32(hash_const)
        hash_const = (hash_const * MULT_B) & WORD
        value = value * np.uint32(hash_const)
        states[:, i] = value ^ (value >> XSHIFT)
    return states
