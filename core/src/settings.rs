//! The daemon's settings: a map of name → value strings, as `guix-daemon`
//! keeps them, with the typed values re-derived after every change.
//!
//! Keeps true: the typed view is always the parse of the map (`update`
//! either succeeds for all settings or changes nothing); values are
//! validated with the C++ daemon's texts (clients and people grep them);
//! the map iterates in name order, which is also the order of the
//! `_NIX_OPTIONS` lines given to helpers.

use std::collections::BTreeMap;

/// Default substitute servers of Guix 1.5.0.
pub const DEFAULT_SUBSTITUTE_URLS: &str = "https://bordeaux.guix.gnu.org https://ci.guix.gnu.org";

/// The typed settings the daemon acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Typed {
    pub try_fallback: bool,
    pub max_build_jobs: u32,
    pub build_cores: u32,
    pub system: String,
    pub multiplexed_build_output: bool,
    pub max_silent_time_s: u64,
    pub build_timeout_s: u64,
    pub reserved_size_bytes: u64,
    pub fsync_metadata: bool,
    pub use_sqlite_wal: bool,
    pub sync_before_registering: bool,
    pub use_substitutes: bool,
    pub build_users_group: String,
    pub use_chroot: bool,
    pub impersonate_linux_26: bool,
    pub keep_log: bool,
    pub max_log_size_bytes: u64,
    pub cache_failure: bool,
    pub poll_interval_s: u64,
    pub check_root_reachability: bool,
    pub gc_keep_outputs: bool,
    pub gc_keep_derivations: bool,
    pub auto_optimise_store: bool,
    pub env_keep_derivations: bool,
}

/// A setting value the daemon refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration setting `{0}' should have an integer value")]
    NotAnInteger(String),
    #[error("configuration option `{name}' should be either `true' or `false', not `{value}'")]
    NotABoolean { name: String, value: String },
}

/// The settings map and its typed view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    raw: BTreeMap<String, String>,
    typed: Typed,
}

impl Default for Typed {
    fn default() -> Typed {
        Typed {
            try_fallback: false,
            max_build_jobs: 1,
            build_cores: 0,
            system: "x86_64-linux".to_owned(),
            multiplexed_build_output: false,
            max_silent_time_s: 3600,
            build_timeout_s: 86400,
            reserved_size_bytes: 8 * 1024 * 1024,
            fsync_metadata: true,
            use_sqlite_wal: true,
            sync_before_registering: false,
            use_substitutes: true,
            build_users_group: String::new(),
            use_chroot: true,
            impersonate_linux_26: false,
            keep_log: true,
            max_log_size_bytes: 0,
            cache_failure: false,
            poll_interval_s: 5,
            check_root_reachability: false,
            gc_keep_outputs: false,
            gc_keep_derivations: true,
            auto_optimise_store: true,
            env_keep_derivations: false,
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        let mut s = Settings {
            raw: BTreeMap::new(),
            typed: Typed::default(),
        };
        s.raw
            .insert("substitute-urls".into(), DEFAULT_SUBSTITUTE_URLS.into());
        s.raw.insert("build-use-substitutes".into(), "true".into());
        s
    }
}

impl Settings {
    /// The typed view.
    pub fn typed(&self) -> &Typed {
        &self.typed
    }

    /// The raw value of `name`, if set.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.raw.get(name).map(String::as_str)
    }

    /// Every raw setting, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.raw.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets `name` without re-deriving the typed view (the daemon's
    /// `settings.set`); call [`Settings::update`] afterwards.
    pub fn set(&mut self, name: &str, value: &str) {
        self.raw.insert(name.to_owned(), value.to_owned());
    }

    /// Re-derives the typed view from the map (`settings.update()`).
    /// On error nothing changes in the typed view.
    pub fn update(&mut self) -> Result<(), SettingsError> {
        let mut t = self.typed.clone();
        self.read_bool("build-fallback", &mut t.try_fallback)?;
        self.read_int("build-max-jobs", &mut t.max_build_jobs)?;
        self.read_int("build-cores", &mut t.build_cores)?;
        self.read_string("system", &mut t.system);
        self.read_bool("multiplexed-build-output", &mut t.multiplexed_build_output)?;
        self.read_int("build-max-silent-time", &mut t.max_silent_time_s)?;
        self.read_int("build-timeout", &mut t.build_timeout_s)?;
        self.read_int("gc-reserved-space", &mut t.reserved_size_bytes)?;
        self.read_bool("fsync-metadata", &mut t.fsync_metadata)?;
        self.read_bool("use-sqlite-wal", &mut t.use_sqlite_wal)?;
        self.read_bool("sync-before-registering", &mut t.sync_before_registering)?;
        self.read_bool("build-use-substitutes", &mut t.use_substitutes)?;
        self.read_string("build-users-group", &mut t.build_users_group);
        self.read_bool("build-use-chroot", &mut t.use_chroot)?;
        self.read_bool("build-impersonate-linux-26", &mut t.impersonate_linux_26)?;
        self.read_bool("build-keep-log", &mut t.keep_log)?;
        self.read_int("build-max-log-size", &mut t.max_log_size_bytes)?;
        self.read_bool("build-cache-failure", &mut t.cache_failure)?;
        self.read_int("build-poll-interval", &mut t.poll_interval_s)?;
        self.read_bool("gc-check-reachability", &mut t.check_root_reachability)?;
        self.read_bool("gc-keep-outputs", &mut t.gc_keep_outputs)?;
        self.read_bool("gc-keep-derivations", &mut t.gc_keep_derivations)?;
        self.read_bool("auto-optimise-store", &mut t.auto_optimise_store)?;
        self.read_bool("env-keep-derivations", &mut t.env_keep_derivations)?;
        self.typed = t;
        Ok(())
    }

    /// The substitute URLs a client should see (op 81): the client's own
    /// (`untrusted-substitute-urls`) when given, else the daemon's, and none
    /// when substitutes are off.
    pub fn effective_substitute_urls(&self) -> Vec<String> {
        if self.raw("build-use-substitutes") != Some("true") {
            return Vec::new();
        }
        let urls = match self.raw("untrusted-substitute-urls") {
            Some(s) if !s.is_empty() => s,
            _ => self.raw("substitute-urls").unwrap_or(""),
        };
        urls.split_whitespace().map(str::to_owned).collect()
    }

    /// `_NIX_OPTIONS` for helper programs: `name=value` lines in name order.
    pub fn nix_options(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.raw {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        }
        out
    }

    fn read_string(&self, name: &str, out: &mut String) {
        if let Some(v) = self.raw.get(name) {
            out.clone_from(v);
        }
    }

    fn read_bool(&self, name: &str, out: &mut bool) -> Result<(), SettingsError> {
        match self.raw.get(name).map(String::as_str) {
            None => Ok(()),
            Some("true") => {
                *out = true;
                Ok(())
            }
            Some("false") => {
                *out = false;
                Ok(())
            }
            Some(v) => Err(SettingsError::NotABoolean {
                name: name.to_owned(),
                value: v.to_owned(),
            }),
        }
    }

    fn read_int<N: CxxUnsigned>(&self, name: &str, out: &mut N) -> Result<(), SettingsError> {
        match self.raw.get(name) {
            None => Ok(()),
            Some(v) => {
                *out =
                    N::parse_cxx(v).ok_or_else(|| SettingsError::NotAnInteger(name.to_owned()))?;
                Ok(())
            }
        }
    }
}

/// An unsigned setting read the way the C++ daemon's `string2Int` reads it
/// with an `istringstream`: leading white space, an optional sign, digits
/// and nothing after; a negative value wraps around (`-1` is the maximum),
/// a value beyond the type's range is refused.
trait CxxUnsigned: Sized {
    fn parse_cxx(text: &str) -> Option<Self>;
}

/// The magnitude and sign of a C++-style integer.
fn parse_cxx_integer(text: &str) -> Option<(bool, u128)> {
    let t = text.trim_start();
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((negative, digits.parse().ok()?))
}

macro_rules! cxx_unsigned {
    ($($t:ty),*) => {$(
        impl CxxUnsigned for $t {
            fn parse_cxx(text: &str) -> Option<$t> {
                let (negative, magnitude) = parse_cxx_integer(text)?;
                let value = <$t>::try_from(magnitude).ok()?;
                Some(if negative { value.wrapping_neg() } else { value })
            }
        }
    )*};
}

cxx_unsigned!(u32, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_update() {
        let mut s = Settings::default();
        s.update().unwrap();
        assert_eq!(s.typed().max_build_jobs, 1);
        assert!(s.typed().use_substitutes);
        s.set("build-max-jobs", "4");
        s.update().unwrap();
        assert_eq!(s.typed().max_build_jobs, 4);
    }

    #[test]
    fn errors_use_daemon_texts_and_change_nothing() {
        let mut s = Settings::default();
        s.set("build-cores", "many");
        assert_eq!(
            s.update().unwrap_err().to_string(),
            "configuration setting `build-cores' should have an integer value"
        );
        assert_eq!(s.typed().build_cores, 0);
        let mut s = Settings::default();
        s.set("build-use-chroot", "yes");
        assert!(s.update().is_err());
        assert!(s.typed().use_chroot);
    }

    #[test]
    fn integers_are_read_like_the_cxx_daemon() {
        assert_eq!(u32::parse_cxx("-1"), Some(u32::MAX));
        assert_eq!(u32::parse_cxx("  42"), Some(42));
        assert_eq!(u32::parse_cxx("+7"), Some(7));
        assert_eq!(u32::parse_cxx("4294967296"), None);
        assert_eq!(u32::parse_cxx("1 "), None);
        assert_eq!(u32::parse_cxx(""), None);
        assert_eq!(u64::parse_cxx("-2"), Some(u64::MAX - 1));
        let mut s = Settings::default();
        s.set("build-max-jobs", "-1");
        s.update().unwrap();
        assert_eq!(s.typed().max_build_jobs, u32::MAX);
    }

    #[test]
    fn substitute_urls_follow_op_81() {
        let mut s = Settings::default();
        assert_eq!(s.effective_substitute_urls().len(), 2);
        s.set("untrusted-substitute-urls", "http://a http://b");
        assert_eq!(s.effective_substitute_urls(), ["http://a", "http://b"]);
        s.set("build-use-substitutes", "false");
        assert!(s.effective_substitute_urls().is_empty());
    }
}
