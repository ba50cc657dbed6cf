//! Times as results, audit lines and lock holders write them.

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC, without a date library.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    rfc3339_of_seconds(seconds)
}

/// The same for a time in microseconds since the epoch, as a host's file
/// times are read (any i64: a host chooses them).
pub fn rfc3339_of_micros(micros: i64) -> String {
    rfc3339_of_seconds(micros.div_euclid(1_000_000))
}

fn rfc3339_of_seconds(seconds: i64) -> String {
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_884_245)),
            "2026-11-28T16:44:05Z"
        );
        assert_eq!(
            rfc3339_of_micros(1_796_593_606_473_941),
            "2026-12-06T21:46:46Z"
        );
        assert_eq!(rfc3339_of_micros(-1), "1969-12-31T23:59:59Z");
        // Whatever a host says, a text comes out (no overflow, no panic).
        for extreme in [i64::MIN, i64::MAX] {
            assert!(rfc3339_of_micros(extreme).ends_with('Z'));
        }
    }
}
