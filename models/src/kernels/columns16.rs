//! What the sixteen-column kernels share ([`super::Q4Kx16`], [`super::Q6Kx16`], [`super::Q8_0x16`]): the
//! repack of a GGUF matrix into blocks of sixteen columns, the work item a tile kernel takes and, for the two
//! kernels with one 512-bit body and one AVX2 body, their tiers and product loop.

use super::Out;

/// Output columns per repacked block: the 32-bit lanes of a 512-bit register.
pub(super) const COLS: usize = 16;

/// A GGUF matrix (`data`: `n` columns, `n` a multiple of 16, of `nb` blocks of `block_bytes` bytes each)
/// repacked into column blocks: entry `j * nb + b` is block `b` of columns `16j..16j + 16`, which
/// `put(src, c, dst)` fills with the GGUF block `src` of column `16j + c`, lane by lane. On candle's pool.
pub(super) fn repack<B: Clone + Send>(
    data: &[u8],
    n: usize,
    nb: usize,
    block_bytes: usize,
    zero: B,
    put: impl Fn(&[u8], usize, &mut B) + Sync,
) -> Vec<B> {
    let mut blocks = vec![zero; n / COLS * nb];
    // Column block `j` takes columns `16j..16j + 16`, which are contiguous in the GGUF data.
    let column_bytes = COLS * nb * block_bytes;
    super::for_each_chunk(&mut blocks, nb, |j, blocks| {
        let columns = &data[j * column_bytes..(j + 1) * column_bytes];
        for (c, column) in columns.chunks_exact(nb * block_bytes).enumerate() {
            for (dst, src) in blocks.iter_mut().zip(column.chunks_exact(block_bytes)) {
                put(src, c, dst);
            }
        }
    });
    blocks
}

/// Columns `ids` of a matrix of `n` columns repacked by [`repack`] (`nb` blocks of `qk` values each), dequantized
/// into `[ids.len(), nb * qk]`, row-major, for a tied table's embedding lookups: `values(block, c, out)`
/// appends column `c`'s `qk` values of `block`. An id past `n` is an error naming `kernel`.
pub(super) fn lookup<B>(
    blocks: &[B],
    n: usize,
    nb: usize,
    qk: usize,
    ids: &[u32],
    kernel: &str,
    values: impl Fn(&B, usize, &mut Vec<f32>),
) -> candle_core::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(ids.len() * nb * qk);
    for &id in ids {
        let col = id as usize;
        if col >= n {
            candle_core::bail!("{kernel}::rows: id {id} past the {n} rows of the table");
        }
        let (j, c) = (col / COLS, col % COLS);
        for block in &blocks[j * nb..(j + 1) * nb] {
            values(block, c, &mut out);
        }
    }
    Ok(out)
}

/// One work item of a tile kernel: a column block's blocks against the quantized rows, written to columns
/// `col0..col0 + 16` of `out`.
pub(super) struct Item<'a, B, L> {
    /// The column block's blocks.
    pub(super) w: &'a [B],
    pub(super) lhs: &'a L,
    pub(super) out: &'a Out,
    /// The block's first column.
    pub(super) col0: usize,
}

/// A tile kernel: rows `r0..r0 + R` of an item against its column block, for the `R` it was built for. A
/// call is sound when the CPU has the kernel's features and the rows and columns lie within the item's
/// `lhs` and `out`.
pub(super) type Tile<B, L> = unsafe fn(&Item<'_, B, L>, usize);

/// A kernel's bodies by tile height `R`: `wide[R - 1]` with 512-bit registers and VNNI, `narrow[R - 1]` with
/// AVX2 alone. Both compute the same bits.
pub(super) struct Tiles<B: 'static, L: 'static> {
    pub(super) wide: [Tile<B, L>; 8],
    pub(super) narrow: [Tile<B, L>; 4],
}

/// Which of a kernel's [`Tiles`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tier {
    /// 512-bit registers (sixteen columns each) and `vpdpbusd`.
    Avx512Vnni,
    /// 256-bit registers (eight columns each).
    Avx2,
}

impl Tier {
    /// The tier this CPU runs: the 512-bit bodies where [`super::avx512_vnni`] says so, else the AVX2 ones.
    pub(super) fn best() -> Self {
        if super::avx512_vnni() {
            Tier::Avx512Vnni
        } else {
            Tier::Avx2
        }
    }
}

/// The `[m, n]` product (row-major) of a repacked matrix (`blocks`, column-block-major, `nb` blocks per column
/// block) with `m` quantized rows `lhs`, by `tiles`' bodies for `tier`: each column block's blocks are loaded
/// and unpacked once per tile of up to eight (512-bit) or four (AVX2) rows.
///
/// # Safety
/// The CPU has `tier`'s features, `n` is a multiple of 16 with `blocks` of `n / 16 * nb` entries, and `lhs`
/// holds `m` rows of `nb` blocks.
pub(super) unsafe fn product<B: Sync, L: Sync>(
    blocks: &[B],
    nb: usize,
    n: usize,
    m: usize,
    lhs: &L,
    tier: Tier,
    tiles: &Tiles<B, L>,
) -> Vec<f32> {
    let (bodies, max_rows): (&[Tile<B, L>], usize) = match tier {
        Tier::Avx512Vnni => (&tiles.wide, 8),
        Tier::Avx2 => (&tiles.narrow, 4),
    };
    super::column_blocks(m, n, COLS, max_rows, |j, r0, rows, out| {
        let item = Item {
            w: &blocks[j * nb..(j + 1) * nb],
            lhs,
            out,
            col0: COLS * j,
        };
        // SAFETY: the caller's contract; `column_blocks` hands out rows `r0..r0 + rows` within `m`, and the body
        // writes only those rows of columns `16j..16j + 16`, which no other item touches.
        unsafe { bodies[rows - 1](&item, r0) }
    })
}
