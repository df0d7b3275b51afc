//! Vector search over unit vectors: exact (every candidate scored) or approximate with an
//! inverted-file index (IVF: k-means centroids, each vector listed under its nearest; a query
//! scores only the lists of its `nprobe` nearest centroids). Filters are applied to each
//! candidate *before* it is scored, so a filtered query returns the filter's top k, not the
//! top k of everything filtered afterwards.
//!
//! Scanning many vectors is bound by memory bandwidth, not arithmetic, so the IVF scan reads
//! [`Quantized`] copies (int8, one scale per vector: a quarter of the bytes) and re-scores its
//! best few candidates with the full f32 vectors before answering.

/// Vectors with their row ids, in one contiguous buffer.
#[derive(Clone, Debug, Default)]
pub struct Vectors {
    /// Dimensions.
    pub dims: usize,
    /// Row id of each vector.
    pub ids: Vec<i64>,
    /// `ids.len() * dims` floats.
    pub data: Vec<f32>,
}

/// Dot product in eight independent lanes, so the compiler can vectorize it (a plain
/// `sum()` of f32 is one serial chain: floating-point addition may not be reordered).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Vectors {
    /// Vector `i`.
    pub fn get(&self, i: usize) -> &[f32] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Exact top `k` by cosine among vectors where `keep(i)`.
    pub fn exact(&self, q: &[f32], k: usize, keep: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)> {
        self.exact_in(q, k, (0..self.len()).filter(|&i| keep(i)))
    }

    /// Exact top `k` by cosine among the vectors at `rows`.
    pub fn exact_in(
        &self,
        q: &[f32],
        k: usize,
        rows: impl Iterator<Item = usize>,
    ) -> Vec<(usize, f32)> {
        let mut top = TopK::new(k);
        for i in rows {
            top.push(i, dot(q, self.get(i)));
        }
        top.into_sorted()
    }
}

/// Dot product of two int8 vectors, accumulated in sixteen i32 lanes (vectorized: the
/// products of 8-bit values cannot overflow them for any dimension below 130 000).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// Vectors quantized to int8, one scale per vector (`x ≈ code * scale`, the vector's largest
/// magnitude mapped to 127).
#[derive(Clone, Debug, Default)]
pub struct Quantized {
    dims: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl Quantized {
    /// Quantize every vector of `v`, in the same order.
    pub fn new(v: &Vectors) -> Quantized {
        let mut q = Quantized {
            dims: v.dims,
            codes: Vec::with_capacity(v.data.len()),
            scales: Vec::with_capacity(v.len()),
        };
        for i in 0..v.len() {
            let (codes, scale) = Self::quantize(v.get(i));
            q.codes.extend(codes);
            q.scales.push(scale);
        }
        q
    }

    /// One vector's codes and scale.
    pub fn quantize(x: &[f32]) -> (Vec<i8>, f32) {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        if max == 0.0 {
            return (vec![0; x.len()], 0.0);
        }
        let scale = max / 127.0;
        let codes = x
            .iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        (codes, scale)
    }

    /// Approximate dot product of a quantized query (`q`, `q_scale`) with vector `i`.
    pub fn score(&self, q: &[i8], q_scale: f32, i: usize) -> f32 {
        let code = &self.codes[i * self.dims..(i + 1) * self.dims];
        dot_i8(q, code) as f32 * q_scale * self.scales[i]
    }
}

/// Keeps the best `k` (index, score) pairs: higher score first, equal scores by lower index,
/// so the answer does not depend on the order candidates were scored in.
struct TopK {
    k: usize,
    items: Vec<(usize, f32)>,
    /// Position of the worst item once full.
    worst: usize,
}

/// Whether `a` ranks above `b`.
fn better(a: (usize, f32), b: (usize, f32)) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k: k.max(1),
            items: Vec::with_capacity(k.max(1) + 1),
            worst: 0,
        }
    }
    fn find_worst(&mut self) {
        let mut w = 0;
        for (i, x) in self.items.iter().enumerate() {
            if better(self.items[w], *x) {
                w = i;
            }
        }
        self.worst = w;
    }
    fn push(&mut self, i: usize, s: f32) {
        if self.items.len() < self.k {
            self.items.push((i, s));
            if self.items.len() == self.k {
                self.find_worst();
            }
        } else if better((i, s), self.items[self.worst]) {
            self.items[self.worst] = (i, s);
            self.find_worst();
        }
    }
    fn into_sorted(mut self) -> Vec<(usize, f32)> {
        self.items
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.items
    }
}

/// An inverted-file index over [`Vectors`].
#[derive(Clone, Debug)]
pub struct Ivf {
    centroids: Vec<f32>,
    lists: Vec<Vec<u32>>,
    /// Set by [`Ivf::contiguous`]: list `c` is rows `ranges[c].0 .. ranges[c].1`.
    ranges: Option<Vec<(u32, u32)>>,
    dims: usize,
}

impl Ivf {
    /// k-means (cosine, `iters` rounds, seeded deterministically) with `nlist` lists.
    pub fn build(v: &Vectors, nlist: usize, iters: usize) -> Ivf {
        let n = v.len();
        let nlist = nlist.clamp(1, n.max(1));
        let dims = v.dims;
        // Deterministic spread-out seeds: every (n / nlist)-th vector.
        let mut centroids: Vec<f32> = (0..nlist)
            .flat_map(|c| v.get((c * n / nlist).min(n.saturating_sub(1))).to_vec())
            .collect();
        let mut assign = vec![0u32; n];
        // Train on a sample for speed; assign everything at the end.
        let step = (n / 20_000).max(1);
        for _ in 0..iters {
            let mut sums = vec![0f32; nlist * dims];
            let mut counts = vec![0u32; nlist];
            for i in (0..n).step_by(step) {
                let c = nearest(&centroids, dims, v.get(i));
                counts[c] += 1;
                for (s, x) in sums[c * dims..(c + 1) * dims].iter_mut().zip(v.get(i)) {
                    *s += x;
                }
            }
            for c in 0..nlist {
                if counts[c] > 0 {
                    let slot = &mut sums[c * dims..(c + 1) * dims];
                    crate::embed::normalize(slot);
                    centroids[c * dims..(c + 1) * dims].copy_from_slice(slot);
                }
            }
        }
        for (i, a) in assign.iter_mut().enumerate() {
            *a = nearest(&centroids, dims, v.get(i)) as u32;
        }
        let mut lists = vec![Vec::new(); nlist];
        for (i, c) in assign.iter().enumerate() {
            lists[*c as usize].push(i as u32);
        }
        Ivf {
            centroids,
            lists,
            ranges: None,
            dims,
        }
    }

    /// The row order that makes every list contiguous (lists one after another). After the
    /// rows are reordered so (row `i` of the new order is old row `order[i]`), call
    /// [`Ivf::contiguous`]: a query then scans memory sequentially instead of jumping.
    pub fn order(&self) -> Vec<u32> {
        self.lists.concat()
    }

    /// The rows were reordered by [`Ivf::order`]: lists become ranges.
    pub fn contiguous(&mut self) {
        let mut start = 0u32;
        let ranges = self
            .lists
            .iter()
            .map(|l| {
                let r = (start, start + l.len() as u32);
                start = r.1;
                r
            })
            .collect();
        self.ranges = Some(ranges);
        self.lists = Vec::new();
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.centroids.len() / self.dims.max(1)
    }

    /// Approximate top `k` among vectors where `keep(i)`, scoring the `nprobe` nearest lists.
    pub fn search(
        &self,
        v: &Vectors,
        q: &[f32],
        k: usize,
        nprobe: usize,
        keep: &dyn Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        let mut top = TopK::new(k);
        self.scan(q, nprobe, keep, |i| top.push(i, dot(q, v.get(i))));
        top.into_sorted()
    }

    /// Like [`Ivf::search`], scanning the int8 copies `codes` of `v` (same order) and
    /// re-scoring the best `4k` (at least 64) of them with `v` itself.
    pub fn search_quantized(
        &self,
        v: &Vectors,
        codes: &Quantized,
        q: &[f32],
        k: usize,
        nprobe: usize,
        keep: &dyn Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        let (q8, qs) = Quantized::quantize(q);
        let mut rough = TopK::new((k * 4).max(64));
        self.scan(q, nprobe, keep, |i| rough.push(i, codes.score(&q8, qs, i)));
        v.exact_in(q, k, rough.items.into_iter().map(|x| x.0))
    }

    /// Calls `score` on every row `keep`s in the `nprobe` lists nearest to `q`.
    fn scan(
        &self,
        q: &[f32],
        nprobe: usize,
        keep: &dyn Fn(usize) -> bool,
        mut score: impl FnMut(usize),
    ) {
        for c in self.probe(q, nprobe) {
            for i in self.rows(c) {
                if keep(i) {
                    score(i);
                }
            }
        }
    }

    /// The `nprobe` lists nearest to `q`, nearest first.
    fn probe(&self, q: &[f32], nprobe: usize) -> Vec<usize> {
        let mut order: Vec<(usize, f32)> = (0..self.nlist())
            .map(|c| {
                (
                    c,
                    dot(q, &self.centroids[c * self.dims..(c + 1) * self.dims]),
                )
            })
            .collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        order.into_iter().take(nprobe.max(1)).map(|x| x.0).collect()
    }

    /// Rows of list `c`.
    fn rows(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        let (range, list) = match &self.ranges {
            Some(r) => (r[c].0 as usize..r[c].1 as usize, &[][..]),
            None => (0..0, &self.lists[c][..]),
        };
        range.chain(list.iter().map(|&i| i as usize))
    }
}

fn nearest(centroids: &[f32], dims: usize, x: &[f32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (c, cent) in centroids.chunks(dims).enumerate() {
        let s = dot(cent, x);
        if s > best.1 {
            best = (c, s);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, dims: usize, seed: u64) -> Vectors {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        // Clustered data, like real embeddings: 50 topics plus noise.
        let topics: Vec<Vec<f32>> = (0..50)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        let mut data = Vec::with_capacity(n * dims);
        for i in 0..n {
            let t = &topics[i % 50];
            let mut v: Vec<f32> = t.iter().map(|x| x + 0.6 * next()).collect();
            crate::embed::normalize(&mut v);
            data.extend(v);
        }
        Vectors {
            dims,
            ids: (0..n as i64).collect(),
            data,
        }
    }

    #[test]
    fn exact_search_finds_the_vector_itself_and_respects_the_filter() {
        let v = random(2000, 32, 7);
        let q = v.get(123).to_vec();
        let top = v.exact(&q, 5, &|_| true);
        assert_eq!(top[0].0, 123);
        assert!((top[0].1 - 1.0).abs() < 1e-4);
        let odd = v.exact(&q, 5, &|i| i % 2 == 1);
        assert!(odd.iter().all(|(i, _)| i % 2 == 1) && odd.len() == 5);
    }

    #[test]
    fn int8_scores_track_f32_and_quantized_ivf_keeps_recall() {
        let v = random(6_000, 40, 13);
        let codes = Quantized::new(&v);
        let q = v.get(77).to_vec();
        let (q8, qs) = Quantized::quantize(&q);
        for i in [0, 77, 500, 5_999] {
            let (exact, rough) = (dot(&q, v.get(i)), codes.score(&q8, qs, i));
            assert!((exact - rough).abs() < 0.02, "{i}: {exact} vs {rough}");
        }
        assert_eq!(dot_i8(&[1, -2, 3], &[4, 5, -6]), 4 - 10 - 18);
        assert_eq!(Quantized::quantize(&[0.0, 0.0]), (vec![0, 0], 0.0));
        let ivf = Ivf::build(&v, 77, 8);
        let (mut same_f32, mut same_i8) = (0, 0);
        for qi in 0..100 {
            let q = v.get(qi * 59).to_vec();
            let exact = v.exact(&q, 10, &|_| true);
            let f = ivf.search(&v, &q, 10, 12, &|_| true);
            let i = ivf.search_quantized(&v, &codes, &q, 10, 12, &|_| true);
            // Re-scored with f32: the scores are exact ones.
            for (row, score) in &i {
                assert!((score - dot(&q, v.get(*row))).abs() < 1e-6);
            }
            same_f32 += f.iter().filter(|x| exact.contains(x)).count();
            same_i8 += i.iter().filter(|x| exact.contains(x)).count();
        }
        assert!(
            same_i8 + 5 >= same_f32,
            "int8 {same_i8} vs f32 {same_f32} of 1000"
        );
    }

    #[test]
    fn ivf_recall_at_10_against_exact_is_high() {
        let v = random(6_000, 32, 11);
        let ivf = Ivf::build(&v, 77, 8);
        let mut hit = 0;
        let queries = 100;
        for qi in 0..queries {
            let q = v.get(qi * 59).to_vec();
            let exact: Vec<usize> = v
                .exact(&q, 10, &|_| true)
                .into_iter()
                .map(|x| x.0)
                .collect();
            let approx: Vec<usize> = ivf
                .search(&v, &q, 10, 12, &|_| true)
                .into_iter()
                .map(|x| x.0)
                .collect();
            hit += approx.iter().filter(|i| exact.contains(i)).count();
        }
        let recall = hit as f64 / (queries * 10) as f64;
        assert!(recall >= 0.9, "recall@10 {recall}");
        // Reordered rows, contiguous lists: the same answers (as row ids).
        let order = ivf.order();
        let mut w = Vectors {
            dims: v.dims,
            ..Vectors::default()
        };
        for &i in &order {
            w.ids.push(v.ids[i as usize]);
            w.data.extend_from_slice(v.get(i as usize));
        }
        let mut c = ivf.clone();
        c.contiguous();
        let q = v.get(5).to_vec();
        let a: Vec<i64> = ivf
            .search(&v, &q, 10, 12, &|_| true)
            .iter()
            .map(|x| v.ids[x.0])
            .collect();
        let b: Vec<i64> = c
            .search(&w, &q, 10, 12, &|_| true)
            .iter()
            .map(|x| w.ids[x.0])
            .collect();
        assert_eq!(a, b);
    }
}
