//! Looking at processes through /proc. Shared by the test harness and the benchmarks
//! (benches/kindler.rs includes this file by path).

/// Is `pid` alive? A zombie is dead for our purposes.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.trim().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}
