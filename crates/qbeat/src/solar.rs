//! Celery's `solar(event, lat, lon)`: sunrise, sunset, solar noon and the
//! dawn/dusk variants at a place, computed with the `sunrise` crate.
//!
//! Celery computes them with `ephem`; the `sunrise` crate's simpler solar
//! equation agrees within a minute or two at most latitudes (checked against
//! Celery's own results in `tests/fixtures/celery_solar.json`), more near
//! the poles, where the sun grazes the horizon.

use std::fmt;

use chrono::{DateTime, Days, Utc};
use sunrise::{Coordinates, DawnType, SolarDay, SolarEvent};

/// The nine events of Celery's `solar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolarKind {
    /// `dawn_astronomical`: the sun's centre 18° below the horizon, morning.
    DawnAstronomical,
    /// `dawn_nautical`: 12° below, morning.
    DawnNautical,
    /// `dawn_civil`: 6° below, morning.
    DawnCivil,
    /// `sunrise`: the upper limb on the horizon (with refraction).
    Sunrise,
    /// `solar_noon`: the sun's transit.
    SolarNoon,
    /// `sunset`.
    Sunset,
    /// `dusk_civil`.
    DuskCivil,
    /// `dusk_nautical`.
    DuskNautical,
    /// `dusk_astronomical`.
    DuskAstronomical,
}

const EVENTS: [(&str, SolarKind); 9] = [
    ("dawn_astronomical", SolarKind::DawnAstronomical),
    ("dawn_civil", SolarKind::DawnCivil),
    ("dawn_nautical", SolarKind::DawnNautical),
    ("dusk_astronomical", SolarKind::DuskAstronomical),
    ("dusk_civil", SolarKind::DuskCivil),
    ("dusk_nautical", SolarKind::DuskNautical),
    ("solar_noon", SolarKind::SolarNoon),
    ("sunrise", SolarKind::Sunrise),
    ("sunset", SolarKind::Sunset),
];

/// Celery's `max_search_days`: how far ahead an event that does not happen
/// every day (polar night and day) is looked for.
const MAX_SEARCH_DAYS: u64 = 366;

/// A solar schedule: every day's `event` at latitude `lat`, longitude `lon`.
#[derive(Debug, Clone, PartialEq)]
pub struct Solar {
    kind: SolarKind,
    lat: f64,
    lon: f64,
}

impl fmt::Display for Solar {
    /// Celery's repr.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<solar: {} at latitude {}, longitude: {}>", self.event(), self.lat, self.lon)
    }
}

impl Solar {
    /// `solar(event, lat, lon)` with Celery's errors.
    pub fn new(event: &str, lat: f64, lon: f64) -> Result<Solar, String> {
        let Some((_, kind)) = EVENTS.iter().find(|(n, _)| *n == event) else {
            let all: Vec<&str> = EVENTS.iter().map(|(n, _)| *n).collect();
            return Err(format!("Argument event \"{event}\" is invalid, must be one of {}.", all.join(", ")));
        };
        if !(-90.0..=90.0).contains(&lat) {
            return Err(format!("Argument latitude {lat} is invalid, must be between -90 and 90."));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(format!("Argument longitude {lon} is invalid, must be between -180 and 180."));
        }
        Ok(Solar { kind: *kind, lat, lon })
    }

    /// The event's name, as Celery spells it.
    pub fn event(&self) -> &'static str {
        EVENTS.iter().find(|(_, k)| *k == self.kind).map_or("", |(n, _)| n)
    }

    /// Which event.
    pub fn kind(&self) -> SolarKind {
        self.kind
    }

    /// The event on the solar day of `date` at this place, if it happens.
    fn on(&self, day: &SolarDay) -> Option<DateTime<Utc>> {
        let event = match self.kind {
            SolarKind::DawnAstronomical => SolarEvent::Dawn(DawnType::Astronomical),
            SolarKind::DawnNautical => SolarEvent::Dawn(DawnType::Nautical),
            SolarKind::DawnCivil => SolarEvent::Dawn(DawnType::Civil),
            SolarKind::Sunrise => SolarEvent::Sunrise,
            SolarKind::Sunset => SolarEvent::Sunset,
            SolarKind::DuskCivil => SolarEvent::Dusk(DawnType::Civil),
            SolarKind::DuskNautical => SolarEvent::Dusk(DawnType::Nautical),
            SolarKind::DuskAstronomical => SolarEvent::Dusk(DawnType::Astronomical),
            SolarKind::SolarNoon => return transit(day),
        };
        day.event_time(event)
    }

    /// The first event strictly after `t`, within a year.
    pub(crate) fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let coords = Coordinates::new(self.lat, self.lon)?;
        // Events of consecutive solar days are in order; a solar day's
        // event may fall on the UTC day before or after its date.
        let mut date = t.date_naive().checked_sub_days(Days::new(1))?;
        for _ in 0..MAX_SEARCH_DAYS + 2 {
            if let Some(at) = self.on(&SolarDay::new(coords, date)) {
                if at > t {
                    return Some(at);
                }
            }
            date = date.checked_add_days(Days::new(1))?;
        }
        None
    }
}

/// Solar noon: the middle of any morning/evening pair of the same
/// elevation (the crate's times are symmetric about the transit); near the
/// poles, the first elevation the sun both reaches and leaves that day.
fn transit(day: &SolarDay) -> Option<DateTime<Utc>> {
    (-17..=17).map(|i| f64::from(i * 5).to_radians()).find_map(|elevation| {
        let up = day.event_time(SolarEvent::Elevation { elevation, morning: true })?;
        let down = day.event_time(SolarEvent::Elevation { elevation, morning: false })?;
        Some(up + (down - up) / 2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The next event as Celery 5.7 (with ephem) computed it, for eight
    /// places from the equator to above the polar circle, every event and
    /// four seasons: within 3 minutes below 60° of latitude, 20 minutes
    /// above (where the sun grazes the horizon, the two solar equations
    /// part most); an event back after a season without it, within 3 days.
    #[test]
    fn events_as_celery_computes_them() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/celery_solar.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 288);
        let mut worst = 0i64;
        for c in cases {
            let lat = c["lat"].as_f64().unwrap();
            let s = Solar::new(c["event"].as_str().unwrap(), lat, c["lon"].as_f64().unwrap()).unwrap();
            let after = utc(c["after"].as_str().unwrap());
            let want = utc(c["next"].as_str().unwrap());
            let got = s.after(after).unwrap();
            let diff = (got - want).num_seconds().abs();
            let limit = if lat.abs() < 60.0 { 180 } else { 1200 };
            // An event that does not happen for a season (astronomical dusk
            // around midsummer in Paris, sunrise in the polar night) comes
            // back a day earlier or later with either equation.
            let edge = (want - after).num_days() > 2;
            if edge {
                assert!((got - want).num_days().abs() <= 3, "{c}: got {got}");
                continue;
            }
            worst = worst.max(diff);
            assert!(diff <= limit, "{c}: got {got}, {diff} s off");
        }
        eprintln!("worst difference from Celery: {worst} s");
        assert!(worst > 0, "the comparison compares");
    }

    #[test]
    fn celery_errors() {
        assert_eq!(
            Solar::new("noon", 0.0, 0.0).unwrap_err(),
            "Argument event \"noon\" is invalid, must be one of dawn_astronomical, dawn_civil, dawn_nautical, \
             dusk_astronomical, dusk_civil, dusk_nautical, solar_noon, sunrise, sunset."
        );
        assert_eq!(
            Solar::new("sunset", 91.0, 0.0).unwrap_err(),
            "Argument latitude 91 is invalid, must be between -90 and 90."
        );
        assert_eq!(
            Solar::new("sunset", 0.0, -180.5).unwrap_err(),
            "Argument longitude -180.5 is invalid, must be between -180 and 180."
        );
        assert_eq!(
            Solar::new("sunset", 48.8566, 2.3522).unwrap().to_string(),
            "<solar: sunset at latitude 48.8566, longitude: 2.3522>"
        );
    }
}
