//! Event JSON into the materialiser: never panics; a gap is an error that
//! leaves the state exactly as it was; whatever state results compiles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use route_model::{compile, Event, OverlayPolicy, PortPolicy, State};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut state = State::default();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Event>(line) else {
            continue;
        };
        let before = state.clone();
        if state.apply(&event).is_err() {
            assert_eq!(state, before, "a gap must not change the state");
        }
    }
    let json = serde_json::to_string(&state).expect("state serialises");
    assert_eq!(
        serde_json::from_str::<State>(&json).expect("and parses back"),
        state
    );
    let _ = compile(
        &state.spec(),
        &PortPolicy::default(),
        &OverlayPolicy::default(),
        1,
    );
});
