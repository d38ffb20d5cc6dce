//! The machine's load as the kernel's pressure stall information tells it
//! (`/proc/pressure/memory` and `/proc/pressure/cpu`, Linux ≥ 4.20), for
//! the scheduler's "hold back new builds under pressure".
//!
//! Keeps true: reading never blocks on anything but procfs (in-memory) and
//! never fails loudly: a kernel without PSI (or a file that does not parse)
//! gives `None`, and the daemon then simply never holds builds back.

use guixd_core::daemon::Pressure;

/// Where the kernel publishes pressure, relative to `/proc`.
const MEMORY_FILE: &str = "/proc/pressure/memory";
const CPU_FILE: &str = "/proc/pressure/cpu";

/// The current pressure, or `None` when the kernel does not say.
pub fn read() -> Option<Pressure> {
    let memory = std::fs::read_to_string(MEMORY_FILE).ok()?;
    let cpu = std::fs::read_to_string(CPU_FILE).ok()?;
    parse(&memory, &cpu)
}

/// Parses the two files' texts: lines `some avg10=1.23 avg60=… total=…`
/// and `full avg10=…`. Values are kept in hundredths of a percent.
pub fn parse(memory: &str, cpu: &str) -> Option<Pressure> {
    Some(Pressure {
        memory_some_avg10_centi: avg10(memory, "some")?,
        // Kernels before 5.13 have no "full" line for cpu, but always one
        // for memory.
        memory_full_avg10_centi: avg10(memory, "full")?,
        cpu_some_avg10_centi: avg10(cpu, "some")?,
    })
}

/// The `avg10` of the line starting with `kind`, in hundredths.
fn avg10(text: &str, kind: &str) -> Option<u32> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(kind))?;
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))?;
    let (whole, fraction) = value.split_once('.').unwrap_or((value, "0"));
    let whole: u32 = whole.parse().ok()?;
    let mut digits = fraction.bytes().take(2).map(|b| b.wrapping_sub(b'0'));
    let tenths = u32::from(digits.next().filter(|d| *d < 10).unwrap_or(0));
    let hundredths = u32::from(digits.next().filter(|d| *d < 10).unwrap_or(0));
    whole
        .checked_mul(100)?
        .checked_add(tenths * 10 + hundredths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_format() {
        let memory = "some avg10=1.50 avg60=0.20 avg300=0.05 total=12345\n\
                      full avg10=12.34 avg60=0.10 avg300=0.01 total=6789\n";
        let cpu = "some avg10=99.99 avg60=50.00 avg300=10.00 total=1\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            parse(memory, cpu),
            Some(Pressure {
                memory_some_avg10_centi: 150,
                memory_full_avg10_centi: 1234,
                cpu_some_avg10_centi: 9999,
            })
        );
    }

    #[test]
    fn garbage_gives_none() {
        assert_eq!(parse("", ""), None);
        assert_eq!(
            parse("some avg10=x\nfull avg10=1.0\n", "some avg10=1"),
            None
        );
    }

    #[test]
    fn reading_the_real_files_never_panics() {
        let _ = read();
    }
}
