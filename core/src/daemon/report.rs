//! What builds tell the clients that wait for them: the events a goal
//! publishes, and how one session turns them into `STDERR_NEXT` frames
//! according to its own options (spec 01 §8).
//!
//! A goal is shared by every session whose request needs it, and each of
//! those sessions has its own verbosity, build verbosity, trace and
//! multiplexing options; so a goal publishes *events*, and each session
//! formats them. Keeps true:
//! - a daemon message of level L reaches a client iff L <= its verbosity;
//!   builder output iff its verbosity >= its build verbosity; a trace line
//!   iff it asked for build traces (`print-build-trace`);
//! - with the pretty log type, a message is prefixed with `"|   "` once per
//!   open nest whose level the client's verbosity admits, as the C++
//!   daemon's nests do: the two debug nests of a build request
//!   (`building ...`, `entered goal loop`) and the nest the event names;
//! - with multiplexed output, every chunk of builder output is one frame,
//!   prefixed with `@ build-log PID LEN\n` in that same frame.

use crate::wire;

/// Verbosity levels of the daemon's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[allow(dead_code)]
pub(crate) enum Level {
    Error = 0,
    Info = 1,
    Talkative = 2,
    Chatty = 3,
    Debug = 4,
    Vomit = 5,
}

/// Something a goal has to say to the clients waiting for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BuildEvent {
    /// A daemon message of `level`, written inside a nest opened at level
    /// `nest` (when given) by the goal.
    Message {
        level: Level,
        text: String,
        nest: Option<Level>,
    },
    /// A `@ ...` trace line (at the error level), shown only to clients
    /// that asked for build traces.
    Trace { text: String, nest: Option<Level> },
    /// A chunk of builder output (at most [`OUTPUT_CHUNK_BYTES`]).
    Output { pid: u32, data: Vec<u8> },
}

impl BuildEvent {
    /// Bytes this event may cost a session's output, for back pressure.
    pub(crate) fn weight_bytes(&self) -> usize {
        match self {
            BuildEvent::Message { text, .. } | BuildEvent::Trace { text, .. } => text.len() + 32,
            BuildEvent::Output { data, .. } => data.len() + 32,
        }
    }
}

/// Builder output is published in chunks of at most this size, as the C++
/// daemon reads its log pipes (so `@ build-log` lengths look alike).
pub(crate) const OUTPUT_CHUNK_BYTES: usize = 4096;

/// How the C++ daemon lays out log lines (`logType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogType {
    /// Nests shown as `"|   "` prefixes (0, what clients send).
    Pretty,
    /// Terminal escapes (1); guixd writes these lines flat.
    Escapes,
    /// No decoration (2).
    Flat,
}

impl LogType {
    pub(crate) fn from_wire(n: u32) -> LogType {
        match n {
            1 => LogType::Escapes,
            2 => LogType::Flat,
            _ => LogType::Pretty,
        }
    }
}

/// One session's view of the log channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReportOptions {
    pub verbosity: u32,
    pub build_verbosity: u32,
    pub print_build_trace: bool,
    pub multiplexed: bool,
    pub log_type: LogType,
}

impl ReportOptions {
    /// Nests open around everything a build request prints: `building
    /// ...` and `entered goal loop`, both at the debug level.
    pub(crate) fn base_depth(&self) -> usize {
        if Level::Debug as u32 <= self.verbosity {
            2
        } else {
            0
        }
    }

    /// The text of a message of `level` at nest `depth`, or `None` when
    /// the client's verbosity hides it.
    pub(crate) fn message(&self, level: Level, depth: usize, text: &str) -> Option<Vec<u8>> {
        if level as u32 > self.verbosity {
            return None;
        }
        let mut line = Vec::with_capacity(text.len() + 4 * depth + 1);
        if self.log_type == LogType::Pretty {
            for _ in 0..depth {
                line.extend_from_slice(b"|   ");
            }
        }
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        Some(line)
    }

    /// The `STDERR_NEXT` frame for `event`, if this client sees it.
    pub(crate) fn frame(&self, event: &BuildEvent) -> Option<Vec<u8>> {
        let text = match event {
            BuildEvent::Message { level, text, nest } => {
                self.message(*level, self.depth(*nest), text)?
            }
            BuildEvent::Trace { text, nest } => {
                if !self.print_build_trace {
                    return None;
                }
                self.message(Level::Error, self.depth(*nest), text)?
            }
            BuildEvent::Output { pid, data } => {
                if self.verbosity < self.build_verbosity {
                    return None;
                }
                let mut text = Vec::with_capacity(data.len() + 32);
                if self.multiplexed {
                    text.extend_from_slice(
                        format!("@ build-log {pid} {}\n", data.len()).as_bytes(),
                    );
                }
                text.extend_from_slice(data);
                text
            }
        };
        let mut out = Vec::with_capacity(text.len() + 24);
        wire::write_stderr_next(&mut out, &text);
        Some(out)
    }

    fn depth(&self, nest: Option<Level>) -> usize {
        let inner = nest.is_some_and(|level| level as u32 <= self.verbosity);
        self.base_depth() + usize::from(inner)
    }
}

/// `showPaths`: each path between a backquote and a quote, comma-separated.
pub(crate) fn show_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, p) in paths.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('`');
        out.push_str(p);
        out.push('\'');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(verbosity: u32) -> ReportOptions {
        ReportOptions {
            verbosity,
            build_verbosity: 0,
            print_build_trace: true,
            multiplexed: false,
            log_type: LogType::Pretty,
        }
    }

    fn text(frame: Option<Vec<u8>>) -> Option<String> {
        let frame = frame?;
        // u64 code, u64 length, bytes, padding.
        let len = u64::from_le_bytes(frame[8..16].try_into().unwrap()) as usize;
        Some(String::from_utf8(frame[16..16 + len].to_vec()).unwrap())
    }

    #[test]
    fn the_start_trace_is_nested_at_info_verbosity_only() {
        let started = BuildEvent::Trace {
            text: "@ build-started D - x86_64-linux L 42".into(),
            nest: Some(Level::Info),
        };
        assert_eq!(
            text(options(0).frame(&started)).unwrap(),
            "@ build-started D - x86_64-linux L 42\n"
        );
        assert_eq!(
            text(options(1).frame(&started)).unwrap(),
            "|   @ build-started D - x86_64-linux L 42\n"
        );
        assert_eq!(
            text(options(4).frame(&started)).unwrap(),
            "|   |   |   @ build-started D - x86_64-linux L 42\n"
        );
        let mut no_trace = options(1);
        no_trace.print_build_trace = false;
        assert_eq!(no_trace.frame(&started), None);
    }

    #[test]
    fn builder_output_follows_build_verbosity_and_multiplexing() {
        let out = BuildEvent::Output {
            pid: 16723,
            data: b"one\ntwo\n".to_vec(),
        };
        let mut o = options(0);
        assert_eq!(text(o.frame(&out)).unwrap(), "one\ntwo\n");
        o.multiplexed = true;
        assert_eq!(
            text(o.frame(&out)).unwrap(),
            "@ build-log 16723 8\none\ntwo\n"
        );
        o.build_verbosity = 1;
        assert_eq!(o.frame(&out), None);
    }

    #[test]
    fn messages_follow_verbosity() {
        let info = BuildEvent::Message {
            level: Level::Info,
            text: "building path(s) `/gnu/store/x'".into(),
            nest: None,
        };
        assert_eq!(options(0).frame(&info), None);
        assert_eq!(
            text(options(1).frame(&info)).unwrap(),
            "building path(s) `/gnu/store/x'\n"
        );
        let mut flat = options(4);
        flat.log_type = LogType::Flat;
        assert_eq!(
            text(flat.frame(&info)).unwrap(),
            "building path(s) `/gnu/store/x'\n"
        );
    }

    #[test]
    fn paths_are_shown_quoted() {
        assert_eq!(show_paths(["/a", "/b"]), "`/a', `/b'");
        assert_eq!(show_paths(Vec::<&str>::new()), "");
    }
}
