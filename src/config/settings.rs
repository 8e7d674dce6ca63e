//! Live settings: the published [`Config`] every task reads, and what a reload may change.
//!
//! Tasks read the settings at the moment of use; start-up settings keep their running
//! value after a reload and are reported as needing a restart.

use std::sync::Arc;

use super::Config;

/// The settings every task reads, published whole: a reload replaces the value, and each
/// task reads the current one at the moment it uses a setting (a request, a batch, a
/// `gc`), so no task keeps settings from start-up and no list of "reloadable keys" exists.
/// What cannot change while running is decided in one place, [`Config::reloaded`].
#[derive(Debug)]
pub struct Settings {
    tx: tokio::sync::watch::Sender<Arc<Config>>,
}

impl Settings {
    /// Publishes `config` as the first settings.
    pub fn new(config: Config) -> Settings {
        Settings {
            tx: tokio::sync::watch::Sender::new(Arc::new(config)),
        }
    }

    /// The settings now (an `Arc` clone; never blocks on a reload for long).
    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Replaces the settings every task reads from now on.
    pub fn publish(&self, config: Config) {
        self.tx.send_replace(Arc::new(config));
    }

    /// A receiver woken at each publication, for a task that must act on a change (the
    /// registrar moves `best` links, the settler takes the new settle period).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }
}

impl Config {
    /// The settings to run with after a reload that read `new`: `new`, except the
    /// start-up settings, which keep their running value (`self`); the names of those that
    /// `new` changes are returned, to be reported as needing a restart.
    ///
    /// Start-up settings are those set up once: the paths and the socket (bound, watched,
    /// locked), how the inbox is watched (`watch`, `poll_interval`), the rescan timer
    /// (`reconcile_interval`), `follow_symlinks` (the settler's and the copier's view of
    /// the inbox), `log_format` (the log writer), `http.listen` (bound once; turning
    /// HTTP on or off also needs a restart) and turning `http.tls` on or off (its files
    /// are read again on each reload). Every other setting is live. The
    /// destructuring below names every field, so a new setting does not compile until it
    /// is placed on one side.
    pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
        let Config {
            root: _,
            source,
            inbox,
            store,
            registry,
            socket,
            socket_group,
            settle,
            reconcile_interval,
            registry_write_interval,
            watch,
            poll_interval,
            follow_symlinks,
            best,
            retention,
            log_level,
            log_json,
            http,
            hf_cache,
            extract,
            events,
            hooks,
            webhooks,
            team,
        } = new;
        let mut restart = Vec::new();
        let mut keep = |key: &'static str, changed: bool| {
            if changed {
                restart.push(key);
            }
        };
        keep("inbox", inbox != self.inbox);
        keep("store", store != self.store);
        keep("registry", registry != self.registry);
        keep("socket", socket != self.socket);
        keep("socket_group", socket_group != self.socket_group);
        keep("watch", watch != self.watch);
        keep("poll_interval", poll_interval != self.poll_interval);
        keep(
            "reconcile_interval",
            reconcile_interval != self.reconcile_interval,
        );
        keep("follow_symlinks", follow_symlinks != self.follow_symlinks);
        keep("log_format", log_json != self.log_json);
        // Team mode's connections and tasks are made once, at start.
        keep(
            "catalog",
            team.as_ref().map(|t| &t.catalog) != self.team.as_ref().map(|t| &t.catalog),
        );
        keep(
            "blobs",
            team.as_ref().map(|t| &t.blobs) != self.team.as_ref().map(|t| &t.blobs),
        );
        keep(
            "blobs_grace",
            team.as_ref().map(|t| t.grace) != self.team.as_ref().map(|t| t.grace),
        );
        // The listener is bound once; its other settings are read per connection.
        let listen = |h: &Option<super::HttpConfig>| h.as_ref().map(|h| h.listen);
        let rebind = listen(&http) != listen(&self.http);
        keep("http.listen", rebind);
        // The certificate is read again on each reload (new paths included), but turning
        // HTTPS on or off changes what the bound listener speaks: a restart.
        let tls = |h: &Option<super::HttpConfig>| h.as_ref().and_then(|h| h.tls.clone());
        let retls = !rebind && tls(&http).is_some() != tls(&self.http).is_some();
        keep("http.tls", retls);
        let http = if rebind {
            self.http.clone()
        } else if retls {
            http.map(|h| super::HttpConfig {
                tls: tls(&self.http),
                ..h
            })
        } else {
            http
        };
        // The live settings from `new`; every start-up setting as it runs.
        let running = Config {
            source,
            settle,
            best,
            retention,
            log_level,
            registry_write_interval,
            http,
            hf_cache,
            extract,
            events,
            hooks,
            webhooks,
            ..self.clone()
        };
        (running, restart)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_config;

    #[test]
    fn reload_keeps_start_up_settings_and_names_them() {
        let old = test_config("").unwrap();
        let new = test_config(
            "watch: poll\nsocket: /run/m.sock\nsettle: 5s\nretention: {\"*\": 2}\ndefault_metric: loss\n",
        )
        .unwrap();
        let (running, restart) = old.reloaded(new);
        assert_eq!(restart, ["socket", "watch"]);
        assert_eq!(running.watch, old.watch);
        assert_eq!(running.socket, old.socket);
        assert_eq!(running.settle, Duration::from_secs(5));
        assert_eq!(running.retention.get("*"), Some(&2));
        assert_eq!(running.best.default_metric, "loss");
        let (_, restart) = old.reloaded(old.clone());
        assert!(restart.is_empty());
    }

    #[test]
    fn moving_or_switching_http_needs_a_restart_other_http_keys_do_not() {
        let on = test_config("http: {listen: \"127.0.0.1:8080\"}\n").unwrap();
        let off = test_config("").unwrap();
        let (running, restart) = off.reloaded(on.clone());
        assert_eq!(restart, ["http.listen"]);
        assert!(running.http.is_none());
        let (running, restart) = on.reloaded(off);
        assert_eq!(restart, ["http.listen"]);
        assert!(running.http.is_some());
        let slower =
            test_config("http: {listen: \"127.0.0.1:8080\", header_timeout: 30s}\n").unwrap();
        let (running, restart) = on.reloaded(slower);
        assert!(restart.is_empty());
        assert_eq!(
            running.http.unwrap().header_timeout,
            Duration::from_secs(30)
        );
        // Turning HTTPS on changes what the listener speaks: a restart, while the other
        // keys of the same reload apply.
        let tls = test_config(
            "http: {listen: \"127.0.0.1:8080\", anonymous_read: true, tls: {cert: c, key: k}}\n",
        )
        .unwrap();
        let (running, restart) = on.reloaded(tls.clone());
        assert_eq!(restart, ["http.tls"]);
        let h = running.http.unwrap();
        assert!(h.tls.is_none() && h.anonymous_read);
        // New certificate paths are read by the reload itself: no restart.
        let moved =
            test_config("http: {listen: \"127.0.0.1:8080\", tls: {cert: c2, key: k2}}\n").unwrap();
        let (running, restart) = tls.reloaded(moved);
        assert!(restart.is_empty(), "{restart:?}");
        let t = running.http.unwrap().tls.unwrap();
        assert_eq!(t.cert.to_str(), Some("c2"));
    }
}
