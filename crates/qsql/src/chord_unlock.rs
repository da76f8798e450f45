//! `celery.chord_unlock`, the polling chord join Python Celery uses with
//! the database backend: the database backend declares no native join
//! ([`ResultBackend::capabilities`](qcore::ResultBackend::capabilities)
//! is false), so chords sent by either side are joined by that task, which
//! every qtask worker runs (the builtin of [`qcore::chord_unlock`]). The
//! types are re-exported here for the callers that knew them from qsql.

pub use qcore::chord_unlock::{chord_unlock_ready, chord_unlock_result_ids, ChordUnlock, ChordUnlockRequest};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;

    #[test]
    fn parses_the_captured_chord_unlock_message() {
        let raw = include_str!("../tests/fixtures/chord-unlock-message-default.raw.json");
        let env: Value = serde_json::from_str(raw).unwrap();
        let body =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, env["body"].as_str().unwrap()).unwrap();
        let decoded: Value = serde_json::from_slice(&body).unwrap();
        let args = decoded[0].as_array().unwrap().clone();
        let kwargs = decoded[1].as_object().unwrap().clone();
        let req = ChordUnlockRequest::parse(&args, &kwargs).unwrap();
        assert_eq!(req.group_id, "46035113-0bf3-4b38-8340-5105a7b4fea4");
        assert_eq!(req.body.task, "capapp.tsum");
        assert_eq!(
            req.result_ids,
            vec![
                "2bd2a187-980a-4767-b94e-4f535310c7a9".to_string(),
                "948557ed-bc1d-44ff-ad8f-f6046bd48992".to_string()
            ]
        );
        assert_eq!(req.interval, Duration::from_secs(1));
        assert_eq!(req.max_retries, None);
    }
}
