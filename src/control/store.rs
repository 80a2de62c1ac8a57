//! The control plane's state on disk: SQLite in `--state DIR`, one row per key, written in
//! a transaction with `synchronous = FULL` before a call is answered, so a call the client
//! saw succeed survives `kill -9`.

use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

pub struct Store {
    db: Connection,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--state {}: cannot create it: {e}", dir.display()))?;
        let path = dir.join("eiplab-state.sqlite");
        let db = Connection::open(&path)
            .map_err(|e| format!("--state: cannot open {}: {e}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nonces (key_id TEXT NOT NULL, nonce TEXT NOT NULL,
                 until INTEGER NOT NULL, PRIMARY KEY (key_id, nonce));",
        )
        .map_err(|e| format!("--state: {}: {e}", path.display()))?;
        Ok(Store { db })
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.db
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| format!("reading state {key}: {e}"))
    }

    /// Remembers a request's signature nonce until `until` (unix seconds), and forgets those
    /// whose time was up at `now`, in one transaction.
    pub fn put_nonce(
        &mut self,
        key_id: &str,
        nonce: &str,
        until: i64,
        now: i64,
    ) -> Result<(), String> {
        let tx = self.db.transaction().map_err(|e| e.to_string())?;
        tx.execute("DELETE FROM nonces WHERE until <= ?1", [now])
            .map_err(|e| format!("forgetting old nonces: {e}"))?;
        tx.execute(
            "INSERT OR REPLACE INTO nonces (key_id, nonce, until) VALUES (?1, ?2, ?3)",
            (key_id, nonce, until),
        )
        .map_err(|e| format!("writing a nonce: {e}"))?;
        tx.commit().map_err(|e| format!("committing a nonce: {e}"))
    }

    /// The nonces still remembered at `now`: (access key id, nonce, until).
    pub fn nonces(&self, now: i64) -> Result<Vec<(String, String, i64)>, String> {
        let mut st = self
            .db
            .prepare("SELECT key_id, nonce, until FROM nonces WHERE until > ?1")
            .map_err(|e| format!("reading nonces: {e}"))?;
        let rows = st
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| format!("reading nonces: {e}"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading nonces: {e}"))
    }

    /// Writes every pair in one transaction.
    pub fn put(&mut self, pairs: &[(&str, String)]) -> Result<(), String> {
        let tx = self.db.transaction().map_err(|e| e.to_string())?;
        for (k, v) in pairs {
            tx.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (k, v),
            )
            .map_err(|e| format!("writing state {k}: {e}"))?;
        }
        tx.commit().map_err(|e| format!("committing state: {e}"))
    }
}
