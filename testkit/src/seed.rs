//! Seeded quickcheck: every randomized test prints its seed on failure and
//! replays from `GUIXD_SEED`.
//!
//! Keeps true: a run with the same seed, test count and size generates the
//! same inputs, so `GUIXD_SEED=N cargo test NAME` reproduces a failure.

use quickcheck::{Gen, QuickCheck, Testable};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// Default number of generated cases per property (override with
/// `GUIXD_QUICKCHECK_TESTS`).
pub const DEFAULT_TESTS: u64 = 200;

/// Default size of generated values (override with `GUIXD_QUICKCHECK_SIZE`).
pub const DEFAULT_SIZE: usize = 100;

/// The seed for this run: `GUIXD_SEED` when set, otherwise fresh entropy.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var("GUIXD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in the time separates runs
    // even where it is not.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Checks `prop` on [`DEFAULT_TESTS`] generated cases.
pub fn check<A: Testable>(prop: A) {
    check_n(env_or("GUIXD_QUICKCHECK_TESTS", DEFAULT_TESTS), prop);
}

/// Checks `prop` on `tests` generated cases, printing the seed on failure.
pub fn check_n<A: Testable>(tests: u64, prop: A) {
    let seed = seed();
    let size = env_or("GUIXD_QUICKCHECK_SIZE", DEFAULT_SIZE);
    let result = catch_unwind(AssertUnwindSafe(|| {
        QuickCheck::new()
            .rng(Gen::from_size_and_seed(size, seed))
            .tests(tests)
            .max_tests(tests * 10)
            .quickcheck(prop);
    }));
    if let Err(panic) = result {
        eprintln!("property failed with seed {seed}; replay with GUIXD_SEED={seed}");
        resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_property_fails() {
        let r = catch_unwind(|| check_n(50, (|x: u8| x < 200) as fn(u8) -> bool));
        assert!(r.is_err(), "x < 200 cannot hold for every u8");
    }

    #[test]
    fn the_same_seed_gives_the_same_cases() {
        use quickcheck::Arbitrary;
        let a: Vec<Vec<u8>> = {
            let mut g = Gen::from_size_and_seed(30, 7);
            (0..10).map(|_| Vec::<u8>::arbitrary(&mut g)).collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut g = Gen::from_size_and_seed(30, 7);
            (0..10).map(|_| Vec::<u8>::arbitrary(&mut g)).collect()
        };
        assert_eq!(a, b);
    }
}
