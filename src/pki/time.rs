//! Certificate and CRL times in the encoding RFC 5280 prescribes.

use std::time::SystemTime;

use der::DateTime;
use der::asn1::{GeneralizedTime, UtcTime};
use x509_cert::time::Time;

use super::PkiError;

/// `time` as UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
pub fn x509_time(time: DateTime) -> Result<Time, PkiError> {
    let encoded = if time.year() <= UtcTime::MAX_YEAR {
        UtcTime::from_date_time(time).map(Time::UtcTime)
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(time)))
    };
    encoded.map_err(|e| PkiError::input(format!("time {time}"), e))
}

/// True when `time` uses the encoding [`x509_time`] would choose for it.
pub fn has_rfc5280_encoding(time: &Time) -> bool {
    let year = time.to_date_time().year();
    matches!(time, Time::UtcTime(_)) == (year <= UtcTime::MAX_YEAR)
}

/// The current time, to the second.
pub fn now() -> DateTime {
    DateTime::from_system_time(SystemTime::now()).expect("the clock is set between 1970 and 9999")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_switches_in_2050() {
        let before = x509_time(DateTime::new(2049, 12, 31, 23, 59, 59).unwrap()).unwrap();
        let after = x509_time(DateTime::new(2050, 1, 1, 0, 0, 0).unwrap()).unwrap();
        assert!(matches!(before, Time::UtcTime(_)));
        assert!(matches!(after, Time::GeneralTime(_)));
        assert!(has_rfc5280_encoding(&before) && has_rfc5280_encoding(&after));
        let wrong = Time::GeneralTime(GeneralizedTime::from_date_time(before.to_date_time()));
        assert!(!has_rfc5280_encoding(&wrong));
    }
}
