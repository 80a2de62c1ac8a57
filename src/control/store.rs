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
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
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
