//! How many 512-bit multiply-class instructions one core retires per nanosecond, alone and mixed: `vpdpbusd`
//! (the integer products of the Q4_K, Q6_K and Q8_0 kernels) and `vfmadd` (their float scaling). Twelve
//! independent chains per loop, so latency does not count, only throughput.
//!
//! The bit-exact kernels' cost follows from it: when twelve of either take as long as eight of one and four of
//! the other, the two share their execution units, and a kernel's time per row is its count of both together.
//!
//! `cargo run --release -p models --example pipebench` (needs AVX-512 F and VNNI).

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Loops of `DP` `vpdpbusd` and `FMA` `vfmadd231ps`, on separate accumulators; ns per loop.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn mix<const DP: usize, const FMA: usize>(loops: usize) -> f64 {
        let (a, b) = (
            std::hint::black_box(_mm512_set1_epi8(3)),
            std::hint::black_box(_mm512_set1_epi8(5)),
        );
        let (x, y) = (
            std::hint::black_box(_mm512_set1_ps(0.999)),
            std::hint::black_box(_mm512_set1_ps(1e-3)),
        );
        // Distinct starting values, so that no two chains are the same computation.
        let mut acc: [__m512i; DP] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32));
        let mut facc: [__m512; FMA] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        let t = std::time::Instant::now();
        for _ in 0..loops {
            for acc in acc.iter_mut() {
                *acc = _mm512_dpbusd_epi32(*acc, a, b);
            }
            for facc in facc.iter_mut() {
                *facc = _mm512_fmadd_ps(*facc, x, y);
            }
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / loops as f64;
        std::hint::black_box((acc, facc));
        ns
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx512f") && has!("avx512bw") && has!("avx512vnni")) {
            eprintln!("pipebench: this CPU lacks AVX-512 VNNI");
            std::process::exit(1);
        }
        let loops = 20_000_000;
        let start = Instant::now();
        // SAFETY: the features were detected above.
        let rows = unsafe {
            [
                ("12 vpdpbusd", x86::mix::<12, 0>(loops)),
                ("12 vfmadd", x86::mix::<0, 12>(loops)),
                ("8 vpdpbusd + 4 vfmadd", x86::mix::<8, 4>(loops)),
                ("12 vpdpbusd + 12 vfmadd", x86::mix::<12, 12>(loops)),
            ]
        };
        println!("| loop body | ns per loop | ns per instruction |");
        println!("|---|---:|---:|");
        for (name, ns) in rows {
            let n: usize = name
                .split(" + ")
                .map(|p| p.split(' ').next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0))
                .sum();
            println!("| {name} | {ns:.2} | {:.3} |", ns / n as f64);
        }
        eprintln!("({:.1} s)", start.elapsed().as_secs_f64());
    }
}
