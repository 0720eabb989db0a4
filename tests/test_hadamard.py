"""Hadamard matrices and transform, checked against independent references.

Orthogonality is checked with float64 products of integer matrices: every partial sum is an integer below
2^53, so those products are exact. Large orders use Freivalds' check H (H^T V) == n V with random integer V.
"""

import math

import numpy as np
import pytest
import torch

from qift_hw.core import hadamard as hd
from qift_hw.core.errors import QiftError

LIMIT = 16384
FULL_CHECK_UP_TO = 1024
FREIVALDS = {1536, 2048, 4096, 11008, 14336, 16384}
SAMPLED_ROWS = 96
MODEL_WIDTHS = {576: 36, 1536: 12, 4096: 1, 11008: 172, 14336: 28, 64: 1, 128: 1}


def sylvester_reference(m: int) -> torch.Tensor:
    """S[i, j] = (-1)^popcount(i & j), the Sylvester matrix in natural order."""
    i = torch.arange(m)
    bits = torch.bitwise_and(i[:, None], i[None, :])
    parity = torch.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return 1 - 2 * parity


def is_prime_power(q: int) -> bool:
    p = next(d for d in range(2, q + 1) if q % d == 0)
    while q % p == 0:
        q //= p
    return q == 1


def paley_orders(limit: int) -> set[int]:
    orders = {q + 1 for q in range(3, limit) if q % 4 == 3 and is_prime_power(q)}
    orders |= {2 * (q + 1) for q in range(5, limit) if q % 4 == 1 and is_prime_power(q)}
    return {k for k in orders if k <= limit}


def check_orthogonal(n: int, rng: np.random.Generator) -> None:
    """H H^T == nI: in full up to FULL_CHECK_UP_TO, by Freivalds' check for FREIVALDS orders, else on sampled rows.

    Freivalds: H (H^T V) == nV for V in [-1000, 1000]^(n x 3); a wrong H passes one column with probability
    <= 1/2001. H^T V stays below 2^24 (exact in float32), H (H^T V) below 2^53 (exact in float64).
    Sampled rows: the Gram matrix of SAMPLED_ROWS random rows (plus the first and last) equals nI.
    """
    h = hd.hadamard_matrix(n, dtype=torch.int8)
    assert h.shape == (n, n)
    if n <= FULL_CHECK_UP_TO:
        assert torch.all(h.abs() == 1), f"entries of H_{n} are not +-1"
        hf = h.to(torch.float64)
        assert torch.equal(hf @ hf.T, n * torch.eye(n, dtype=torch.float64)), f"H H^T != nI for n={n}"
    elif n in FREIVALDS:
        assert torch.all(h.abs() == 1), f"entries of H_{n} are not +-1"
        v = torch.from_numpy(rng.integers(-1000, 1001, size=(n, 3)))
        vt = v.T.float().contiguous()
        blocks = range(0, n, 2048)
        w = sum(vt[:, i : i + 2048] @ h[i : i + 2048].float() for i in blocks).T.double()
        hv = torch.cat([h[i : i + 2048].double() @ w for i in blocks])
        assert torch.equal(hv, n * v.double()), f"Freivalds check H H^T V != nV failed for n={n}"
    else:
        rows = np.unique(np.r_[0, n - 1, rng.choice(n, SAMPLED_ROWS, replace=False)])
        r = h[torch.from_numpy(rows)].double()
        assert torch.all(r.abs() == 1), f"entries of H_{n} are not +-1"
        assert torch.equal(r @ r.T, n * torch.eye(len(rows), dtype=torch.float64)), f"rows of H_{n} not orthogonal"


def test_required_orders_supported():
    for k in (12, 20, 28, 36, 44, 52, 60, 108, 172, 92):
        assert hd.is_supported(k) and hd.split_order(k) == (k, 1), k
    for n, k in MODEL_WIDTHS.items():
        assert hd.split_order(n) == (k, n // k), n
    assert "q=25" in hd.construction(52)
    assert "Williamson" in hd.construction(172)


def test_every_paley_order_and_power_multiple_is_supported():
    ks = hd.supported_k()
    for k in paley_orders(hd.MAX_K):
        assert hd.is_supported(k), f"Paley order {k} not supported"
    claimed = set(hd.supported_orders(LIMIT))
    for k in ks:
        m = 1
        while k * m <= LIMIT:
            assert k * m in claimed
            m *= 2
    for n in claimed:
        k, m = hd.split_order(n)
        assert k * m == n and m & (m - 1) == 0 and k in ks
        smaller = [k >> j for j in range(1, k.bit_length()) if k % (1 << j) == 0]
        assert not any(hd.is_supported(s) for s in smaller), f"split of {n} is not the smallest K"


def test_all_k_orthogonal_exact():
    for k in hd.supported_k():
        h = hd.hadamard_matrix(k)
        assert torch.all(h.abs() == 1)
        assert torch.equal(h @ h.T, k * torch.eye(k, dtype=torch.int64)), f"H_{k} H_{k}^T != {k} I"


def test_all_supported_orders_up_to_16384_orthogonal():
    orders = hd.supported_orders(LIMIT)
    assert 14336 in orders and 11008 in orders and 16384 in orders
    rng = np.random.default_rng(0)
    for n in orders:
        check_orthogonal(n, rng)


def test_kronecker_convention_and_sylvester():
    for n in (1, 2, 8, 256):
        assert torch.equal(hd.hadamard_matrix(n), sylvester_reference(n))
    for n in (24, 576, 1536, 688):
        k, m = hd.split_order(n)
        expected = torch.kron(hd.hadamard_matrix(k), sylvester_reference(m))
        assert torch.equal(hd.hadamard_matrix(n), expected)


def test_gf25_is_a_field():
    for q in (9, 25, 27, 49):
        add, mul = (torch.from_numpy(np.array(t)) for t in hd.gf_tables(q))
        elems = torch.arange(q)
        assert all(torch.equal(row.sort().values, elems) for row in add), f"GF({q}) addition is not a group"
        assert all(torch.equal(row.sort().values, elems[1:]) for row in mul[1:, 1:]), f"GF({q})* is not a group"
        assert torch.equal(add[0], elems) and torch.equal(mul[1], elems) and torch.all(mul[0] == 0)
        assert torch.equal(add, add.T) and torch.equal(mul, mul.T)
        left = mul[:, add]
        right = add[mul[:, :, None], mul[:, None, :]]
        assert torch.equal(left, right), f"GF({q}) is not distributive"
        a, b, c = torch.meshgrid(elems, elems, elems, indexing="ij")
        assert torch.equal(mul[mul[a, b], c], mul[a, mul[b, c]]), f"GF({q}) is not associative"
    with pytest.raises(QiftError, match="prime power"):
        hd.gf_tables(6)


@pytest.mark.parametrize("n", [1, 2, 12, 20, 52, 96, 172, 576, 1536, 2752])
def test_transform_matches_dense_float(n):
    torch.manual_seed(n)
    h = hd.hadamard_matrix(n).to(torch.float64)
    x = torch.randn(3, 5, n, dtype=torch.float64)
    x_before = x.clone()
    y = hd.hadamard_transform(x)
    assert torch.equal(x, x_before), "the transform changed its input"
    torch.testing.assert_close(y, x @ h.T / math.sqrt(n), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hd.hadamard_transform(x, normalize=False), x @ h.T, rtol=1e-12, atol=1e-10)
    y32 = hd.hadamard_transform(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), x @ h.T / math.sqrt(n), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [4, 12, 36, 172, 576, 1536, 2752])
def test_transform_integer_exact(n):
    gen = torch.Generator().manual_seed(n)
    h = hd.hadamard_matrix(n)
    for dtype in (torch.int64, torch.int32):
        x = torch.randint(-8, 8, (4, n), generator=gen, dtype=dtype)
        y = hd.hadamard_transform(x, normalize=False)
        assert y.dtype == dtype
        assert torch.equal(y.to(torch.int64), x.to(torch.int64) @ h.T)


def test_transform_integer_exact_near_int64_limit():
    """Values whose partial sums exceed 2^53 (float64 is no longer exact) are still transformed exactly."""
    gen = torch.Generator().manual_seed(1)
    for n in (12, 172 * 4):
        h = hd.hadamard_matrix(n)
        x = torch.randint(-(2**52), 2**52, (3, n), generator=gen, dtype=torch.int64)
        assert torch.equal(hd.hadamard_transform(x, normalize=False), x @ h.T)


def test_transform_is_x_times_h_transposed_not_h():
    h = hd.hadamard_matrix(12)
    assert not torch.equal(h, h.T), "Paley I H_12 should not be symmetric"
    x = torch.randint(-8, 8, (6, 12))
    y = hd.hadamard_transform(x, normalize=False)
    assert torch.equal(y, x @ h.T) and not torch.equal(y, x @ h)


def test_hadamard_matrix_returns_a_fresh_tensor():
    h = hd.hadamard_matrix(12)
    h.zero_()
    assert torch.all(hd.hadamard_matrix(12).abs() == 1)
    q = hd.hadamard_matrix_float(20, normalize=True)
    torch.testing.assert_close(q @ q.T, torch.eye(20, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [64, 576, 1536])
def test_random_hadamard_orthogonal_and_seeded(n):
    q = hd.random_hadamard(n, seed=3)
    assert q.dtype == torch.float64 and q.shape == (n, n)
    torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-10)
    signs = hd.random_signs(n, seed=3)
    assert set(signs.tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(q, hd.hadamard_matrix(n).double() @ torch.diag(signs) / math.sqrt(n), rtol=0, atol=1e-15)
    assert torch.equal(q, hd.random_hadamard(n, seed=3))
    assert not torch.equal(q, hd.random_hadamard(n, seed=4))
    assert not torch.equal(signs, hd.random_signs(n, seed=4))


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: hd.hadamard_matrix(0), "positive int"),
        (lambda: hd.hadamard_matrix(-4), "positive int"),
        (lambda: hd.hadamard_matrix(4.0), "positive int"),
        (lambda: hd.hadamard_matrix(True), "positive int"),
        (lambda: hd.split_order(6), "divisible by 4"),
        (lambda: hd.split_order(116), "112 and 120"),
        (lambda: hd.split_order(1052), "MAX_K"),
        (lambda: hd.random_hadamard(116, seed=0), "not supported"),
        (lambda: hd.random_signs(8, seed="a"), "int seed"),
        (lambda: hd.hadamard_transform([1.0, 2.0]), "torch.Tensor"),
        (lambda: hd.hadamard_transform(torch.tensor(1.0)), "at least one dimension"),
        (lambda: hd.hadamard_transform(torch.zeros(2, 6)), "not supported"),
        (lambda: hd.hadamard_transform(torch.zeros(2, 0)), "empty"),
        (lambda: hd.hadamard_transform(torch.zeros(2, 8, dtype=torch.int64)), "normalize=False"),
        (lambda: hd.hadamard_transform(torch.zeros(2, 8, dtype=torch.bool), normalize=False), "float or integer"),
        (lambda: hd.hadamard_matrix_float(8, dtype=torch.int32), "floating dtype"),
        (lambda: hd.hadamard_matrix(8, dtype=torch.uint8), "signed integer or float"),
    ],
)
def test_bad_input_raises_one_line(call, words):
    with pytest.raises(QiftError) as info:
        call()
    message = str(info.value)
    assert words in message and "\n" not in message


def test_unsupported_message_names_the_true_neighbours():
    for n in (116, 156, 1052, 6, 11000, 3):
        with pytest.raises(QiftError) as info:
            hd.split_order(n)
        below = max(m for m in range(1, n) if hd.is_supported(m))
        above = min(m for m in range(n + 1, 2 * n + 4) if hd.is_supported(m))
        assert f"{below} and {above}" in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transform_on_cuda_matches_cpu():
    for n in (576, 1536, 11008):
        x = torch.randn(8, n, dtype=torch.float64)
        gpu = hd.hadamard_transform(x.cuda()).cpu()
        torch.testing.assert_close(gpu, hd.hadamard_transform(x), rtol=1e-12, atol=1e-12)
        for high in (8, 2**48):
            xi = torch.randint(-high, high, (8, n))
            gpu = hd.hadamard_transform(xi.cuda(), normalize=False).cpu()
            assert torch.equal(gpu, hd.hadamard_transform(xi, normalize=False))
