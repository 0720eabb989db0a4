"""Hadamard matrices of order K * 2^k and the fast Walsh-Hadamard transform.

Rotating a model (QuaRot style) needs a +-1 matrix H with H H^T = n I for every width n of the model,
and widths such as 576, 1536 or 14336 are not powers of two. Every order is split as n = K * 2^k with
the smallest K this module can build, and

    H_n = H_K kron S_{2^k},

where S_{2^k} is the Sylvester matrix (S_1 = [1], S_{2m} = [[S_m, S_m], [S_m, -S_m]]) and H_K is built
by code, never typed in:

* Paley I: q = 3 mod 4 a prime power, order q + 1;
* Paley II: q = 1 mod 4 a prime power, order 2(q + 1);
  both use the quadratic character of GF(q), with GF(p^m) = GF(p)[x] / (an irreducible polynomial);
* Kronecker products of two smaller orders (below MAX_K these only ever double an order);
* Williamson type 4m (m odd): four symmetric circulant +-1 matrices A, B, C, D with
  A^2 + B^2 + C^2 + D^2 = 4m I, found by a small exhaustive search over sequences that are constant on
  the orbits of a multiplicative subgroup of Z_m containing -1 (this gives 92 and 172 = 4 * 43).

K is limited to ``MAX_K``: the K part of the transform is a dense K x K product, and the Paley and
Williamson builders stay cheap below it.

The transform is ``hadamard_transform(x) = x @ H_n.T`` over the last dimension (divided by sqrt(n) when
normalised). H_n is not symmetric in general (Paley I gives H_K^T != H_K), so the transposition matters.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from qift_hw.core.errors import QiftError

MAX_K = 256
_DENSE_CACHE_LIMIT = 8192
_WILLIAMSON_MAX_ORBITS = 13


# ---------------------------------------------------------------- finite fields GF(p^m)


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, m) with q = p^m and p prime, or None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    m, rest = 0, q
    while rest % p == 0:
        rest //= p
        m += 1
    return (p, m) if rest == 1 else None


def _poly_mod(a: list[int], f: list[int], p: int) -> list[int]:
    """Remainder of polynomial a by monic f over GF(p); coefficients lowest degree first."""
    a = [c % p for c in a]
    d = len(f) - 1
    for i in range(len(a) - 1, d - 1, -1):
        c = a[i]
        if c:
            for j in range(d + 1):
                a[i - d + j] = (a[i - d + j] - c * f[j]) % p
    return (a[:d] + [0] * d)[:d]


@functools.lru_cache(maxsize=None)
def _irreducible(p: int, m: int) -> tuple[int, ...]:
    """The first monic irreducible polynomial of degree m over GF(p) (lowest degree first)."""
    if m == 1:
        return (0, 1)
    divisors = [
        list(c) + [1] for d in range(1, m // 2 + 1) for c in itertools.product(range(p), repeat=d)
    ]
    for c in itertools.product(range(p), repeat=m):
        f = list(c) + [1]
        if c[0] and not any(not any(_poly_mod(f, g, p)) for g in divisors):
            return tuple(f)
    raise AssertionError(f"no irreducible polynomial of degree {m} over GF({p})")


@functools.lru_cache(maxsize=None)
def gf_tables(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Addition and multiplication tables of GF(q), q a prime power, as read-only q x q int arrays.

    Element e stands for the polynomial sum_i d_i x^i where d_i are the base-p digits of e; products are
    reduced modulo the first monic irreducible polynomial of degree m (so GF(25) = GF(5)[x]/(x^2 + ...)).
    """
    pm = _prime_power(q)
    if pm is None:
        raise QiftError(f"GF({q}) does not exist: {q} is not a prime power; use q = p^m with p prime")
    p, m = pm
    f = list(_irreducible(p, m))
    digits = np.array([[(e // p**i) % p for i in range(m)] for e in range(q)], dtype=np.int64)
    weights = p ** np.arange(m, dtype=np.int64)
    add = ((digits[:, None, :] + digits[None, :, :]) % p) @ weights
    mul = np.zeros((q, q), dtype=np.int64)
    for a in range(q):
        for b in range(a, q):
            conv = np.convolve(digits[a], digits[b]).tolist()
            mul[a, b] = mul[b, a] = int(np.dot(_poly_mod(conv, f, p), weights))
    add.setflags(write=False)
    mul.setflags(write=False)
    return add, mul


def _quadratic_character(q: int) -> tuple[np.ndarray, np.ndarray]:
    """chi(e) for every element e of GF(q) (0, +1 square, -1 non-square) and the subtraction table."""
    add, mul = gf_tables(q)
    chi = -np.ones(q, dtype=np.int64)
    chi[np.unique(np.diagonal(mul))] = 1
    chi[0] = 0
    neg = np.argmin(add, axis=1)
    sub = add[:, neg]
    return chi, sub


def _paley_q_matrix(q: int) -> np.ndarray:
    """Jacobsthal matrix Q[a, b] = chi(a - b) of GF(q)."""
    chi, sub = _quadratic_character(q)
    return chi[sub]


def _paley1(q: int) -> np.ndarray:
    """Paley I Hadamard matrix of order q + 1 (q = 3 mod 4): I + S with S skew, S S^T = q I."""
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _paley_q_matrix(q)
    return np.eye(q + 1, dtype=np.int64) + s


def _paley2(q: int) -> np.ndarray:
    """Paley II Hadamard matrix of order 2(q + 1) (q = 1 mod 4) from the symmetric conference matrix C."""
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _paley_q_matrix(q)
    return np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(
        np.eye(q + 1, dtype=np.int64), np.array([[1, -1], [-1, -1]])
    )


# ---------------------------------------------------------------- Williamson type


def _subgroups_with_minus_one(m: int) -> list[frozenset[int]]:
    """Cyclic-generated subgroups <g, -1> of the units of Z_m, fewest orbits first."""
    groups: set[frozenset[int]] = set()
    for g in range(1, m):
        if math.gcd(g, m) != 1:
            continue
        elems, x = set(), 1
        while True:
            elems |= {x, (m - x) % m}
            x = x * g % m
            if x == 1:
                break
        groups.add(frozenset(elems))
    return sorted(groups, key=lambda h: (-len(h), sorted(h)))


def _orbits(m: int, group: frozenset[int]) -> list[list[int]]:
    seen: set[int] = set()
    out = []
    for x in range(m):
        if x not in seen:
            orbit = sorted({x * h % m for h in group})
            seen |= set(orbit)
            out.append(orbit)
    return out


def _williamson_search(m: int, group: frozenset[int]) -> tuple[np.ndarray, ...] | None:
    """Four symmetric +-1 sequences, constant on the group's orbits, whose periodic autocorrelations sum to 0."""
    orbits = _orbits(m, group)[1:]
    r = len(orbits)
    bits = (np.arange(2**r)[:, None] >> np.arange(r)) & 1
    seqs = np.ones((2**r, m), dtype=np.int64)
    for i, orbit in enumerate(orbits):
        seqs[:, orbit] = 1 - 2 * bits[:, i : i + 1]
    psd = np.abs(np.fft.rfft(seqs, axis=1)) ** 2
    keep = (psd <= 4 * m + 1e-6).all(axis=1)
    seqs, psd = seqs[keep], psd[keep]
    paf = np.rint(np.fft.irfft(psd, m, axis=1)).astype(np.int64)[:, 1 : m // 2 + 1]
    i, j = np.triu_indices(len(seqs))
    fits = ((psd[i] + psd[j]) <= 4 * m + 1e-6).all(axis=1)
    i, j = i[fits], j[fits]
    sums = paf[i] + paf[j]
    first: dict[bytes, int] = {}
    for k, row in enumerate(sums):
        first.setdefault(row.tobytes(), k)
    for k, row in enumerate(sums):
        other = first.get((-row).tobytes())
        if other is not None:
            return seqs[i[k]], seqs[j[k]], seqs[i[other]], seqs[j[other]]
    return None


@functools.lru_cache(maxsize=None)
def _williamson_sequences(m: int) -> tuple[np.ndarray, ...] | None:
    """First rows of Williamson matrices of odd order m, or None if the bounded search finds none."""
    for group in _subgroups_with_minus_one(m):
        if len(_orbits(m, group)) <= _WILLIAMSON_MAX_ORBITS:
            found = _williamson_search(m, group)
            if found is not None:
                return found
    return None


def _circulant(row: np.ndarray) -> np.ndarray:
    n = len(row)
    return row[(np.arange(n)[None, :] - np.arange(n)[:, None]) % n]


def _williamson(m: int) -> np.ndarray:
    """Williamson array [[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]] of order 4m."""
    a, b, c, d = (_circulant(s) for s in _williamson_sequences(m))
    return np.block([[a, b, c, d], [-b, a, -d, c], [-c, d, a, -b], [-d, -c, b, a]])


# ---------------------------------------------------------------- constructions of H_K


@functools.lru_cache(maxsize=None)
def _recipe(k: int) -> tuple | None:
    """How to build a Hadamard matrix of order k <= MAX_K, or None if this module cannot."""
    if k == 1:
        return ("one",)
    if k == 2:
        return ("sylvester",)
    if k % 4 or k > MAX_K:
        return None
    pm = _prime_power(k - 1)
    if pm is not None and (k - 1) % 4 == 3:
        return ("paley1", k - 1)
    pm = _prime_power(k // 2 - 1)
    if pm is not None and (k // 2 - 1) % 4 == 1:
        return ("paley2", k // 2 - 1)
    for a in range(2, math.isqrt(k) + 1):
        if k % a == 0 and _recipe(a) is not None and _recipe(k // a) is not None:
            return ("kron", a, k // a)
    if (k // 4) % 2 == 1 and _williamson_sequences(k // 4) is not None:
        return ("williamson", k // 4)
    return None


def construction(k: int) -> str:
    """A short description of how H_k is built, e.g. 'Paley II, q=25' for k = 52."""
    recipe = _recipe(k)
    if recipe is None:
        raise QiftError(f"no construction for a Hadamard matrix of order {k}; see split_order({k})")
    kind = recipe[0]
    if kind == "one":
        return "trivial [1]"
    if kind == "sylvester":
        return "Sylvester"
    if kind == "paley1":
        return f"Paley I, q={recipe[1]}"
    if kind == "paley2":
        return f"Paley II, q={recipe[1]}"
    if kind == "kron":
        return f"Kronecker {recipe[1]} x {recipe[2]}"
    return f"Williamson, m={recipe[1]}"


@functools.lru_cache(maxsize=None)
def _k_matrix(k: int) -> np.ndarray:
    """Read-only H_k (int64) for a supported k <= MAX_K."""
    recipe = _recipe(k)
    kind = recipe[0]
    if kind == "one":
        h = np.ones((1, 1), dtype=np.int64)
    elif kind == "sylvester":
        h = np.array([[1, 1], [1, -1]], dtype=np.int64)
    elif kind == "paley1":
        h = _paley1(recipe[1])
    elif kind == "paley2":
        h = _paley2(recipe[1])
    elif kind == "kron":
        h = np.kron(_k_matrix(recipe[1]), _k_matrix(recipe[2]))
    else:
        h = _williamson(recipe[1])
    h.setflags(write=False)
    return h


# ---------------------------------------------------------------- orders


def _check_order(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise QiftError(f"Hadamard order must be a positive int, got {n!r} ({type(n).__name__})")
    if n <= 0:
        raise QiftError(f"Hadamard order must be a positive int, got {n}")
    return int(n)


def _split(n: int) -> tuple[int, int] | None:
    m = n & -n
    odd = n // m
    k = odd
    while k <= min(n, MAX_K):
        if _recipe(k) is not None:
            return k, n // k
        k *= 2
    return None


def is_supported(n: int) -> bool:
    """True if hadamard_matrix(n) can be built (n = K * 2^k with a constructible K <= MAX_K)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        return False
    return _split(int(n)) is not None


def supported_orders(limit: int) -> list[int]:
    """All supported orders n <= limit, ascending."""
    return [n for n in range(1, _check_order(limit) + 1) if _split(n) is not None]


def supported_k(limit: int = MAX_K) -> list[int]:
    """The K factors that split_order can return (K with split_order(K) == (K, 1)), up to limit."""
    return [k for k in range(1, min(_check_order(limit), MAX_K) + 1) if _split(k) == (k, 1)]


def _nearest(n: int) -> tuple[int | None, int]:
    """The largest supported order below n (None if none) and the smallest above it."""
    orders = [k << j for k in supported_k() for j in range(n.bit_length() + 1)]
    return max((o for o in orders if o < n), default=None), min(o for o in orders if o > n)


def _unsupported_reason(n: int) -> str:
    m = n & -n
    odd = n // m
    if n % 4 and odd > 1:
        return f"a Hadamard matrix of order > 2 needs n divisible by 4, and {n} = {odd} x {m}"
    if 4 * odd > MAX_K:
        return f"its odd part {odd} needs K >= {4 * odd} > MAX_K = {MAX_K}"
    tried = [str(odd * 2**i) for i in range(2, 20) if odd * 2**i <= min(n, MAX_K)]
    which = f"K = {tried[0]} cannot" if len(tried) == 1 else f"none of K = {', '.join(tried)} can"
    return (
        f"{which} be built here (no Paley I/II prime power, no Kronecker factorisation, no Williamson "
        "solution in the bounded search)"
    )


def split_order(n: int) -> tuple[int, int]:
    """(K, 2^k) with n = K * 2^k and the smallest K that this module can build (K = 1 for powers of two)."""
    n = _check_order(n)
    split = _split(n)
    if split is None:
        below, above = _nearest(n)
        near = f"nearest supported sizes: {below} and {above}" if below else f"nearest supported size: {above}"
        raise QiftError(f"Hadamard order {n} is not supported: {_unsupported_reason(n)}; {near}")
    return split


# ---------------------------------------------------------------- dense matrices


def _sylvester(m: int) -> np.ndarray:
    s = np.ones((1, 1), dtype=np.int8)
    while s.shape[0] < m:
        s = np.block([[s, s], [s, -s]])
    return s


@functools.lru_cache(maxsize=16)
def _dense_int8(n: int) -> torch.Tensor:
    k, m = split_order(n)
    hk = torch.from_numpy(_k_matrix(k).astype(np.int8))
    return torch.kron(hk, torch.from_numpy(_sylvester(m)))


def _dense(n: int) -> tuple[torch.Tensor, bool]:
    """The int8 matrix and whether it is shared (cached, so callers must copy it)."""
    n = _check_order(n)
    if n <= _DENSE_CACHE_LIMIT:
        return _dense_int8(n), True
    return _dense_int8.__wrapped__(n), False


def hadamard_matrix(n: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """H_n = H_K kron S_{2^k}: a new tensor of +-1 (torch.int64 unless dtype says otherwise), H_n H_n^T = n I.

    torch.int8 keeps the largest orders small (16384^2 bytes = 256 MiB instead of 2 GiB).
    """
    if not isinstance(dtype, torch.dtype) or dtype in (torch.bool, torch.uint8) or dtype.is_complex:
        raise QiftError(f"hadamard_matrix needs a signed integer or float dtype, got {dtype!r}")
    h, shared = _dense(n)
    return h.to(dtype, copy=shared)


def hadamard_matrix_float(n: int, dtype: torch.dtype = torch.float64, normalize: bool = False) -> torch.Tensor:
    """hadamard_matrix(n) as a float tensor, divided by sqrt(n) (orthogonal) when normalize is True."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise QiftError(f"hadamard_matrix_float needs a floating dtype, got {dtype}; use hadamard_matrix for ints")
    h = _dense(n)[0].to(dtype)
    return h / math.sqrt(n) if normalize else h


# ---------------------------------------------------------------- fast transform


@functools.lru_cache(maxsize=64)
def _k_tensor(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_k_matrix(k), dtype=dtype, device=device)


def _walsh_hadamard(t: torch.Tensor) -> torch.Tensor:
    """S_m over dim 0 of a contiguous (m, cols) tensor that the caller owns (m a power of two); the result may be
    `t` itself, overwritten.

    Each pass applies H_2 to the top bit of the m index (top + bottom, top - bottom of the two halves) and stores
    the result as its lowest bit; after log2(m) passes every bit is done once and back in place. With m the
    outer dimension both halves and both outputs are contiguous blocks of (m / 2) * cols values, and the passes
    alternate between `t` and one more buffer, so no pass allocates.
    """
    m, cols = t.shape
    if m == 1:
        return t
    if t.requires_grad and torch.is_grad_enabled():  # out= has no autograd; stack gives the same values
        for _ in range(m.bit_length() - 1):
            top, bottom = t[: m // 2], t[m // 2 :]
            t = torch.stack((top + bottom, top - bottom), dim=1).view(m, cols)
        return t
    src, dst = t, torch.empty_like(t)
    for _ in range(m.bit_length() - 1):
        top, bottom = src[: m // 2], src[m // 2 :]
        pairs = dst.view(m // 2, 2, cols)
        torch.add(top, bottom, out=pairs[:, 0])
        torch.sub(top, bottom, out=pairs[:, 1])
        src, dst = dst, src
    return src


def _mix_k(z: torch.Tensor, hk: torch.Tensor) -> torch.Tensor:
    """z @ hk.T over the last dim of a contiguous (a, b, K) tensor.

    Integers go through a float64 product when every partial sum stays below 2^53 (then it is exact and uses
    BLAS); otherwise an integer matmul on the CPU, or K signed row sums where there is none (CUDA).
    """
    a, b, k = z.shape
    if z.is_floating_point():
        return (z.view(a * b, k) @ hk.T).view(a, b, k)
    if z.numel() == 0 or max(int(z.max()), -int(z.min())) * k < 2**53:
        exact = z.view(a * b, k).to(torch.float64) @ hk.to(torch.float64).T
        return exact.to(z.dtype).view(a, b, k)
    if z.device.type == "cpu":
        return (z.view(a * b, k) @ hk.T).view(a, b, k)
    plus = hk > 0
    return torch.stack([z[..., plus[i]].sum(-1) - z[..., ~plus[i]].sum(-1) for i in range(k)], dim=-1)


def hadamard_transform(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """x @ H_n.T over the last dim (n = x.shape[-1]), divided by sqrt(n) if normalize; O(n log n + n K).

    Floating tensors may be normalised; integer tensors (int32/int64) are transformed exactly and must use
    normalize=False (values grow by up to a factor n, so leave headroom: log2(n) bits).
    """
    if not isinstance(x, torch.Tensor):
        raise QiftError(f"hadamard_transform needs a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise QiftError("hadamard_transform needs a tensor with at least one dimension (the last is transformed)")
    if x.dtype == torch.bool or x.is_complex():
        raise QiftError(f"hadamard_transform needs a float or integer tensor, got {x.dtype}")
    floating = x.is_floating_point()
    if normalize and not floating:
        raise QiftError(
            f"normalize=True needs a floating tensor, got {x.dtype}; use normalize=False for the exact integer "
            "transform and fold 1/sqrt(n) into the next scale"
        )
    n = x.shape[-1]
    if n == 0:
        raise QiftError(f"hadamard_transform: last dim of shape {tuple(x.shape)} is empty")
    try:
        k, m = split_order(n)
    except QiftError as err:
        raise QiftError(f"hadamard_transform: last dim of shape {tuple(x.shape)}: {err}") from None
    rows = x.numel() // n
    # m-major layout (m, rows * k): one blocked 2-D transpose in, butterfly passes over long contiguous halves, the
    # K mix on (m * rows, k) rows, one transpose out; the same operations on the same values as any layout
    z = _walsh_hadamard(x.reshape(rows * k, m).t().clone(memory_format=torch.contiguous_format))
    if k == 1:
        y = z.t().contiguous()
        if normalize:
            y.mul_(1.0 / math.sqrt(n))
        return y.view(x.shape)
    hk = _k_tensor(k, x.dtype, x.device)
    if normalize:
        hk = hk * (1.0 / math.sqrt(n))
    return _mix_k(z.view(m, rows, k), hk).view(m, rows * k).t().contiguous().view(x.shape)


# ---------------------------------------------------------------- random orthogonal rotations


def random_signs(n: int, seed: int) -> torch.Tensor:
    """n random +-1 values (torch.float64) from a torch.Generator seeded with seed."""
    n = _check_order(n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise QiftError(f"random_signs needs an int seed, got {seed!r} ({type(seed).__name__})")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=gen).to(torch.float64).mul_(2).sub_(1)


def random_hadamard(n: int, seed: int) -> torch.Tensor:
    """Orthogonal Q = H_n diag(random_signs(n, seed)) / sqrt(n) as torch.float64."""
    split_order(n)
    return hadamard_matrix_float(n) * random_signs(n, seed)[None, :] / math.sqrt(n)
