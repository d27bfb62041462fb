"""Numba kernels for weighted 1-D clustering of sorted rows (private to anyprec.clustering).

Every kernel works on rows already sorted ascending: `xs: f64[N, K]` values and
`fs: f64[N, K]` their sample weights (>= 0), in the same order. A clustering of a
row is a list of `bounds` (int64[k + 1], bounds[0] = 0, bounds[k] = K): cluster c is
the contiguous range xs[bounds[c]:bounds[c + 1]], its code is c and its centroid is
the weighted mean of its members. Methods are passed as ints (0 = optimal,
1 = lloyd) so each kernel compiles once.
"""

import numba as nb
import numpy as np

METHOD_OPTIMAL = 0
METHOD_LLOYD = 1
# Depth of the explicit divide & conquer stack: 2 * log2(K) + slack, K < 2**60.
_STACK = 128


@nb.njit(cache=True)
def _mean(x, f, a, e):
    """Weighted mean of x[a:e] (unweighted if its weights sum to 0), clamped to the range's hull.

    Clamping keeps centroids of ordered ranges ordered despite rounding; e > a.
    """
    sw = 0.0
    sx = 0.0
    for i in range(a, e):
        sw += f[i]
        sx += f[i] * x[i]
    if sw > 0.0:
        m = sx / sw
    else:
        sx = 0.0
        for i in range(a, e):
            sx += x[i]
        m = sx / (e - a)
    return min(max(m, x[a]), x[e - 1])


@nb.njit(cache=True)
def _finish(x, f, bounds, codes, lut):
    """Write codes (rank of each position's cluster) and centroids for given bounds.

    An empty cluster starting at position a gets x[a - 1] (x[0] if a == 0): that value
    lies between its neighbours' members, so the LUT stays sorted now and after upscaling.
    """
    k = bounds.shape[0] - 1
    for c in range(k):
        a = bounds[c]
        e = bounds[c + 1]
        for i in range(a, e):
            codes[i] = c
        if e > a:
            lut[c] = _mean(x, f, a, e)
        else:
            lut[c] = x[a - 1] if a > 0 else x[0]


@nb.njit(cache=True)
def _prefix_centered(x, f, W, S1, S2):
    """Prefix sums of f, f*y, f*y^2 with y = x - mu, mu the weighted mean (returned).

    Centring limits the cancellation in S2 - S1^2 / W.
    """
    n = x.shape[0]
    sw = 0.0
    sx = 0.0
    for i in range(n):
        sw += f[i]
        sx += f[i] * x[i]
    mu = sx / sw if sw > 0.0 else 0.0
    W[0] = 0.0
    S1[0] = 0.0
    S2[0] = 0.0
    for i in range(n):
        y = x[i] - mu
        W[i + 1] = W[i] + f[i]
        S1[i + 1] = S1[i] + f[i] * y
        S2[i + 1] = S2[i] + f[i] * y * y
    return mu


@nb.njit(cache=True, inline="always")
def _cost(W, S1, S2, j, i):
    """Weighted within-cluster sum of squares of positions [j, i), from prefix sums."""
    w = W[i] - W[j]
    if w <= 0.0:
        return 0.0
    s = S1[i] - S1[j]
    c = (S2[i] - S2[j]) - s * s / w
    return c if c > 0.0 else 0.0


@nb.njit(cache=True, inline="always")
def _range_cost(W, S1, S2, T, lam, j, i):
    """Cost of cluster [j, i) in a seed DP: the plain cost, or (joint seed, T non-empty)
    lam * cost + T[j, i], T[j, i] the least cost of [j, i) split in two."""
    c = _cost(W, S1, S2, j, i)
    if T.shape[0] > 0:
        return lam * c + T[j, i]
    return c


@nb.njit(cache=True)
def _dp_level(W, S1, S2, T, lam, d_prev, d_cur, opt_prev, opt_row, ilo, ihi, jlo):
    """One DP layer: d_cur[i] = min_{jlo <= j < i} d_prev[j] + cost(j, i) for i in [ilo, ihi].

    The cost (`_range_cost`) is a Monge array (for the joint seed too: T is the min-plus
    product of the Monge cost with itself), so the leftmost argmin is non-decreasing in i and
    divide & conquer needs O((ihi - ilo) log K) cost evaluations instead of O(K^2).
    It is also no smaller than the previous layer's argmin at the same i (with one
    more cluster the last one does not grow), which prunes each scan further.
    """
    stack = np.empty((_STACK, 4), dtype=np.int64)
    sp = 0
    stack[0, 0] = ilo
    stack[0, 1] = ihi
    stack[0, 2] = jlo
    stack[0, 3] = ihi - 1
    sp = 1
    while sp > 0:
        sp -= 1
        lo = stack[sp, 0]
        hi = stack[sp, 1]
        jl = stack[sp, 2]
        jh = stack[sp, 3]
        mid = (lo + hi) // 2
        jend = min(jh, mid - 1)
        # Clamped so rounding that bends monotonicity can never empty the scan.
        jstart = min(max(jl, opt_prev[mid]), jend)
        best = np.inf
        bj = jstart
        for j in range(jstart, jend + 1):
            v = d_prev[j] + _range_cost(W, S1, S2, T, lam, j, mid)
            if v < best:
                best = v
                bj = j
        d_cur[mid] = best
        opt_row[mid] = bj
        if lo <= mid - 1:
            stack[sp, 0] = lo
            stack[sp, 1] = mid - 1
            stack[sp, 2] = jl
            stack[sp, 3] = bj
            sp += 1
        if mid + 1 <= hi:
            stack[sp, 0] = mid + 1
            stack[sp, 1] = hi
            stack[sp, 2] = bj
            stack[sp, 3] = jh
            sp += 1


@nb.njit(cache=True)
def _split_table(W, S1, S2, n):
    """T[j, i] = least cost of [j, i) cut into two contiguous parts, for 0 <= j < i <= n.

    Knuth's bound (the cost is Monge, so the best cut s(j, i) obeys
    s(j, i - 1) <= s(j, i) <= s(j + 1, i)) visits O(n) cuts per row of T: O(n^2) in all.
    Rows are filled from j = n - 1 down, each left to right (contiguous writes), keeping
    the cuts of the row below. Returns f64[n + 1, n + 1] (only j < i filled).
    """
    T = np.zeros((n + 1, n + 1))
    below = np.zeros(n + 1, dtype=np.int64)  # s(j + 1, i)
    here = np.zeros(n + 1, dtype=np.int64)  # s(j, i)
    for j in range(n - 1, -1, -1):
        here[j + 1] = j + 1  # one value: nothing to cut, cost 0
        for i in range(j + 2, n + 1):
            lo = here[i - 1] if i > j + 2 else j + 1
            hi = below[i] if i > j + 2 else j + 1
            hi = min(max(hi, lo), i - 1)  # rounding that bends the bound never empties the scan
            best = np.inf
            bs = lo
            for s in range(lo, hi + 1):
                v = _cost(W, S1, S2, j, s) + _cost(W, S1, S2, s, i)
                if v < best:
                    best = v
                    bs = s
            T[j, i] = best
            here[i] = bs
        below, here = here, below
    return T


@nb.njit(cache=True)
def _optimal_bounds(x, f, k, bounds, lam):
    """Exact optimal weighted k-means of a sorted row (K >= k): fills bounds[0..k].

    D_m[i] = least cost of the first i values in m non-empty clusters; layers 2..k-1
    by divide & conquer, the last layer only at i = K, then backtrack the argmins.
    lam < 0: the plain seed. lam >= 0 (joint seed): a cluster costs lam * its cost plus
    the cost of its best split in two, so the bounds minimise
    lam * objective(seed) + objective(seed + 1 after the optimal split); lam = 0 is the
    optimum of 2k clusters, paired.
    """
    n = x.shape[0]
    if lam == 0.0 and n >= 2 * k:
        # Only objective(seed + 1) counts: its exact optimum, clusters paired (no table needed).
        finer = np.empty(2 * k + 1, dtype=np.int64)
        _optimal_bounds(x, f, 2 * k, finer, -1.0)
        bounds[:] = finer[::2]
        return
    W = np.empty(n + 1)
    S1 = np.empty(n + 1)
    S2 = np.empty(n + 1)
    _prefix_centered(x, f, W, S1, S2)
    T = _split_table(W, S1, S2, n) if lam >= 0.0 else np.zeros((0, 0))
    d_prev = np.full(n + 1, np.inf)
    d_cur = np.full(n + 1, np.inf)
    opt = np.zeros((k + 1, n + 1), dtype=np.int64)
    for i in range(1, n - k + 2):
        d_prev[i] = _range_cost(W, S1, S2, T, lam, 0, i)
    for m in range(2, k):
        d_cur[:] = np.inf
        _dp_level(W, S1, S2, T, lam, d_prev, d_cur, opt[m - 1], opt[m], m, n - (k - m), m - 1)
        d_prev, d_cur = d_cur, d_prev
    best = np.inf
    bj = max(k - 1, opt[k - 1, n - 1])
    for j in range(bj, n):
        v = d_prev[j] + _range_cost(W, S1, S2, T, lam, j, n)
        if v < best:
            best = v
            bj = j
    bounds[k] = n
    bounds[k - 1] = bj
    for m in range(k - 1, 1, -1):
        bounds[m - 1] = opt[m, bounds[m]]
    bounds[0] = 0


@nb.njit(cache=True)
def _next_random(state):
    """splitmix64 step: (new state, uniform float in [0, 1)); per-row streams are thread-independent."""
    state = (state + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = state
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = z ^ (z >> np.uint64(31))
    return state, float(z >> np.uint64(11)) / 9007199254740992.0


@nb.njit(cache=True)
def _sample_index(p, total, u):
    """Index i with probability p[i] / total (u uniform in [0, 1)); uniform if total is 0."""
    n = p.shape[0]
    if total <= 0.0:
        return min(int(u * n), n - 1)
    r = u * total
    acc = 0.0
    for i in range(n):
        acc += p[i]
        if acc > r:
            return i
    return n - 1


@nb.njit(cache=True)
def _kmeans_pp(x, f, k, state):
    """Greedy weighted k-means++ (2 + ln k local trials, as scikit-learn): k sorted centres."""
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    centers = np.empty(k)
    state, u = _next_random(state)
    total_f = 0.0
    for i in range(n):
        total_f += f[i]
    centers[0] = x[_sample_index(f, total_f, u)]
    d2 = np.empty(n)
    pot = 0.0
    for i in range(n):
        d2[i] = f[i] * (x[i] - centers[0]) ** 2
        pot += d2[i]
    for c in range(1, k):
        best_pot = np.inf
        best_x = x[0]
        for _ in range(trials):
            state, u = _next_random(state)
            cand = x[_sample_index(d2, pot, u)]
            p = 0.0
            for i in range(n):
                p += min(d2[i], f[i] * (x[i] - cand) ** 2)
            if p < best_pot:
                best_pot = p
                best_x = cand
        centers[c] = best_x
        pot = 0.0
        for i in range(n):
            d2[i] = min(d2[i], f[i] * (x[i] - best_x) ** 2)
            pot += d2[i]
    return np.sort(centers)


@nb.njit(cache=True)
def _lower_bound(x, v):
    """First index i with x[i] >= v (x sorted ascending)."""
    lo = 0
    hi = x.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if x[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True)
def _lloyd_bounds(x, f, k, max_iter, state, bounds):
    """Reference baseline: weighted k-means++ then at most max_iter Lloyd steps (K >= k).

    In 1-D an assignment step is k - 1 binary searches for the midpoints between
    sorted centres; an update step is weighted means from prefix sums.
    """
    n = x.shape[0]
    W = np.empty(n + 1)
    S1 = np.empty(n + 1)
    S2 = np.empty(n + 1)
    mu = _prefix_centered(x, f, W, S1, S2)
    cent = _kmeans_pp(x, f, k, state)
    new = np.empty(k + 1, dtype=np.int64)
    bounds[:] = -1
    for _ in range(max_iter):
        new[0] = 0
        new[k] = n
        for c in range(1, k):
            new[c] = _lower_bound(x, 0.5 * (cent[c - 1] + cent[c]))
        if np.array_equal(new, bounds):
            break
        bounds[:] = new
        for c in range(k):
            a = bounds[c]
            e = bounds[c + 1]
            if e > a:
                w = W[e] - W[a]
                cent[c] = (S1[e] - S1[a]) / w + mu if w > 0.0 else _mean(x, f, a, e)
        # Empty clusters keep stale centres; re-sorting keeps the midpoints ordered.
        cent = np.sort(cent)


@nb.njit(parallel=True, cache=True)
def seed_rows(xs, fs, k, method, max_iter, rng_seed, row_offset, lam, codes, lut):
    """Seed clustering of every sorted row into k clusters (rows in parallel).

    xs, fs: f64[N, K]; lam: joint-seed weight (< 0: plain seed; optimal method only,
    see `_optimal_bounds`); codes: uint8[N, K] out (code of each sorted position);
    lut: f64[N, k] out (sorted centroids). rng_seed and row_offset + row index seed
    each row's k-means++ stream, so results do not depend on chunking or threads.
    """
    n_rows, n = xs.shape
    for r in nb.prange(n_rows):
        x = xs[r]
        f = fs[r]
        bounds = np.empty(k + 1, dtype=np.int64)
        if n <= k:
            for c in range(k + 1):
                bounds[c] = min(c, n)
        elif method == METHOD_OPTIMAL:
            _optimal_bounds(x, f, k, bounds, lam)
        else:
            state = np.uint64(rng_seed) * np.uint64(1000003) + np.uint64(row_offset + r)
            _lloyd_bounds(x, f, k, max_iter, state, bounds)
        _finish(x, f, bounds, codes[r], lut[r])


@nb.njit(cache=True)
def _split_weights(f, a, e, g):
    """Copy the weights of x[a:e] into g[:e - a]; all ones if they sum to 0 (unweighted split)."""
    total = 0.0
    for i in range(a, e):
        g[i - a] = f[i]
        total += f[i]
    if total <= 0.0:
        g[: e - a] = 1.0


@nb.njit(cache=True)
def _split_optimal(x, g, a, e, mu, suf_w, suf_s):
    """Best split s in (a, e) of the sorted range x[a:e] into [a, s), [s, e): one O(n) scan.

    g: the range's weights (g[i - a] for x[i]), mu their weighted mean. Minimising
    the two children's costs is maximising sl^2/wl + sr^2/wr of the centred sums;
    right sums come from a suffix pass so a zero-weight tail gives exactly 0.
    """
    m = e - a
    suf_w[m] = 0.0
    suf_s[m] = 0.0
    for i in range(m - 1, -1, -1):
        suf_w[i] = suf_w[i + 1] + g[i]
        suf_s[i] = suf_s[i + 1] + g[i] * (x[a + i] - mu)
    wl = 0.0
    sl = 0.0
    best = -1.0
    bs = a + 1
    for i in range(1, m):
        wl += g[i - 1]
        sl += g[i - 1] * (x[a + i - 1] - mu)
        gain = 0.0
        if wl > 0.0:
            gain += sl * sl / wl
        if suf_w[i] > 0.0:
            gain += suf_s[i] * suf_s[i] / suf_w[i]
        if gain > best:
            best = gain
            bs = a + i
    return bs


@nb.njit(cache=True)
def _split_lloyd(x, g, a, e, cum_w, cum_s):
    """The reference's split: binary search for a Lloyd fixed point of 2-means on x[a:e].

    A point s is a fixed point when the midpoint of the two children's means lies in
    [x[s - 1], x[s]]. The search never looks at the two end splits; with one
    non-zero weight every member goes left.
    """
    m = e - a
    if m <= 2:
        return a + 1
    cum_w[0] = 0.0
    cum_s[0] = 0.0
    positive = 0
    for i in range(m):
        cum_w[i + 1] = cum_w[i] + g[i]
        cum_s[i + 1] = cum_s[i] + g[i] * x[a + i]
        if g[i] > 0.0:
            positive += 1
    if positive == 1:
        return e
    lo = 1
    hi = m - 1
    s = (lo + hi) // 2
    while lo + 1 < hi:
        s = (lo + hi) // 2
        wl = cum_w[s]
        if wl == 0.0:
            lo = s
            continue
        wr = cum_w[m] - cum_w[s]
        if wr <= 0.0:
            hi = s
            continue
        mid = 0.5 * (cum_s[s] / wl + (cum_s[m] - cum_s[s]) / wr)
        if x[a + s - 1] <= mid:
            if mid <= x[a + s]:
                break
            lo = s
        else:
            hi = s
    return a + s


@nb.njit(cache=True)
def _split_range(x, f, a, e, method, g, buf1, buf2):
    """Split point of the non-empty sorted range x[a:e]: children [a, s) and [s, e)."""
    if e - a == 1:
        return e
    _split_weights(f, a, e, g)
    if method == METHOD_OPTIMAL:
        sw = 0.0
        sx = 0.0
        for i in range(e - a):
            sw += g[i]
            sx += g[i] * x[a + i]
        return _split_optimal(x, g, a, e, sx / sw, buf1, buf2)
    return _split_lloyd(x, g, a, e, buf1, buf2)


@nb.njit(cache=True)
def _halves_costs(W, S1, S2, a, e, suffix, out, stack):
    """out[c - a] = least cost of [a, c) (suffix: [c, e)) cut into two parts, for every c in
    [a, e]; 0 for fewer than 2 positions. O(m log m) for m = e - a: the best cut is
    non-decreasing in c (the interval costs satisfy the quadrangle inequality), so each
    middle c of a range of c scans only the cuts between its neighbours' best cuts.
    stack: int64[>= 4 * (2 * log2(m) + 4)] scratch."""
    m = e - a
    for i in range(m + 1):
        out[i] = 0.0
    if m < 2:
        return
    top = 0
    stack[0] = a if suffix else a + 2  # range of c
    stack[1] = e - 2 if suffix else e
    stack[2] = a + 1  # range of cuts
    stack[3] = e - 1
    top = 4
    while top > 0:
        top -= 4
        lo, hi, t_lo, t_hi = stack[top], stack[top + 1], stack[top + 2], stack[top + 3]
        if lo > hi:
            continue
        c = (lo + hi) // 2
        t0 = max(t_lo, c + 1 if suffix else a + 1)
        t1 = min(t_hi, e - 1 if suffix else c - 1)
        best = np.inf
        bt = t0
        for t in range(t0, t1 + 1):
            if suffix:
                v = _cost(W, S1, S2, c, t) + _cost(W, S1, S2, t, e)
            else:
                v = _cost(W, S1, S2, a, t) + _cost(W, S1, S2, t, c)
            if v < best:
                best = v
                bt = t
        out[c - a] = best
        stack[top], stack[top + 1], stack[top + 2], stack[top + 3] = lo, c - 1, t_lo, bt
        stack[top + 4], stack[top + 5], stack[top + 6], stack[top + 7] = c + 1, hi, bt, t_hi
        top += 8


@nb.njit(cache=True)
def _split_lookahead(W, S1, S2, a, e, lam, left, right, stack):
    """Split s of [a, e) minimising lam * (cost[a, s) + cost[s, e)) + the cost of each child
    split again in two (the width after next): O(m log m) for m = e - a. W, S1, S2: the
    row's prefix sums (`_prefix_centered`); left, right: f64[>= m + 1] scratch; lam -> inf
    is the plain best split."""
    _halves_costs(W, S1, S2, a, e, False, left, stack)
    _halves_costs(W, S1, S2, a, e, True, right, stack)
    best = np.inf
    bs = a + 1
    for s in range(a + 1, e):
        v = lam * (_cost(W, S1, S2, a, s) + _cost(W, S1, S2, s, e)) + left[s - a] + right[s - a]
        if v < best:
            best = v
            bs = s
    return bs


@nb.njit(cache=True)
def _child_centroids(x, f, a, s, e, parent):
    """(left, right) centroids of children [a, s), [s, e); an empty child copies its sibling
    (or both copy the parent centroid when the parent is empty)."""
    if e == a:
        return parent, parent
    left = _mean(x, f, a, s) if s > a else 0.0
    right = _mean(x, f, s, e) if e > s else left
    if s == a:
        left = right
    return left, right


@nb.njit(parallel=True, cache=True)
def upscale_rows(xs, fs, codes, lut, from_bits, to_bits, method, lam, out_codes, heap):
    """Split every cluster bit by bit from from_bits to to_bits (rows in parallel).

    xs, fs: f64[N, K] sorted rows, codes: uint8[N, K] non-decreasing along each row
    (cluster c = the positions with code c), lut: f64[N, 2**from_bits].
    lam >= 0 (optimal only): the first step's splits look one width ahead
    (`_split_lookahead`); lam < 0: every split is the plain best one.
    out_codes: uint8[N, K] codes at to_bits; heap: f64[N, 2**(to_bits + 1)] where
    level b's LUT is heap[:, 2**b : 2**(b + 1)] for from_bits < b <= to_bits.
    """
    n_rows, n = xs.shape
    k_max = 1 << to_bits
    for r in nb.prange(n_rows):
        x = xs[r]
        f = fs[r]
        bounds = np.zeros(k_max + 1, dtype=np.int64)
        new_bounds = np.zeros(k_max + 1, dtype=np.int64)
        cent = np.empty(k_max)
        g = np.empty(n)
        buf1 = np.empty(n + 1)
        buf2 = np.empty(n + 1)
        ahead = lam >= 0.0 and method == METHOD_OPTIMAL and to_bits > from_bits
        W = np.empty(n + 1 if ahead else 0)
        S1 = np.empty(n + 1 if ahead else 0)
        S2 = np.empty(n + 1 if ahead else 0)
        stack = np.empty(4 * 2 * 70, dtype=np.int64)  # > 2 * log2(n) + 4 ranges of 4 for any n < 2**64
        if ahead:
            _prefix_centered(x, f, W, S1, S2)
        k = 1 << from_bits
        for i in range(n):
            bounds[codes[r, i] + 1] += 1
        for c in range(k):
            bounds[c + 1] += bounds[c]
            cent[c] = lut[r, c]
        for b in range(from_bits, to_bits):
            for c in range(k):
                a = bounds[c]
                e = bounds[c + 1]
                if ahead and b == from_bits and e - a > 1 and W[e] - W[a] > 0.0:
                    s = _split_lookahead(W, S1, S2, a, e, lam, buf1, buf2, stack)
                else:
                    s = _split_range(x, f, a, e, method, g, buf1, buf2) if e > a else a
                left, right = _child_centroids(x, f, a, s, e, cent[c])
                new_bounds[2 * c] = a
                new_bounds[2 * c + 1] = s
                heap[r, 2 * k + 2 * c] = left
                heap[r, 2 * k + 2 * c + 1] = right
            k *= 2
            new_bounds[k] = n
            bounds[: k + 1] = new_bounds[: k + 1]
            cent[:k] = heap[r, k : 2 * k]
        for c in range(k):
            for i in range(bounds[c], bounds[c + 1]):
                out_codes[r, i] = c
