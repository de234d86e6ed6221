//! The workspace store: one SQLite database (`.rtlab/store.sqlite`, WAL mode) for everything keyed by a
//! content hash that many rows share: verifier results, LLM responses (the cassette), benchmark runs.
//!
//! Invariant: this module owns the schema and its migrations; capabilities get typed accessors, never
//! SQL strings of their own.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Migrations in order; `meta.version` says how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE verify_results (key TEXT PRIMARY KEY, report TEXT NOT NULL, created INTEGER NOT NULL)",
    "CREATE TABLE llm_responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created INTEGER NOT NULL)",
    "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, model TEXT NOT NULL, options TEXT NOT NULL, dataset_hash TEXT NOT NULL, metrics TEXT NOT NULL, created INTEGER NOT NULL)",
    // Which verifier made a verdict (rows from before have ''), and whether it is final: a timeout or
    // a killed tool is provisional until the same verdict is reached twice.
    "ALTER TABLE verify_results ADD COLUMN code TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE verify_results ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE verify_results ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE verify_results ADD COLUMN limits TEXT NOT NULL DEFAULT ''",
    // What the server said it was when it answered (Ollama's model digest); '' when it says nothing.
    "ALTER TABLE llm_responses ADD COLUMN served_by TEXT NOT NULL DEFAULT ''",
];

/// A verdict as stored, with what made it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVerdict {
    /// The verifier's report, as JSON.
    pub report: String,
    /// The code identity of the verifier that made it ('' for verdicts stored before identities).
    pub code: String,
    /// How many runs in a row reached this verdict.
    pub attempts: i64,
    /// A transient verdict (a timeout, a killed tool) not yet reached twice: tried again next run.
    pub provisional: bool,
    /// The time limits it ran under (JSON), so a timeout is not served to a run with longer ones.
    pub limits: String,
}

/// A recorded model response (one row of the cassette).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub key: String,
    pub model: String,
    pub request: String,
    pub response: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The server's identity for the model when it answered (Ollama's digest), or ''.
    #[serde(default)]
    pub served_by: String,
}

/// A benchmark run as recorded.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub model: String,
    pub options: String,
    pub dataset_hash: String,
    pub metrics: String,
    pub created: i64,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A store shared by everything in the process that works in its workspace.
pub type SharedStore = Arc<Mutex<Store>>;

/// The stores opened so far, one per workspace, with the database file's inode when opened.
static OPEN: Mutex<Vec<(PathBuf, u64, SharedStore)>> = Mutex::new(Vec::new());

/// The store in the workspace directory `ws` (`.rtlab/`), opened (and migrated) once per workspace
/// and shared by every runtime in the process, or None with a warning when it cannot be opened:
/// callers then work uncached. A store whose file was deleted or replaced since (`rm -rf .rtlab`
/// beside a REPL) is opened again, so no result is written to a file nobody can read. Scripts reach
/// it through `Workspace::store`.
pub fn open(ws: &Path) -> Option<SharedStore> {
    let ws = ws.to_path_buf();
    let inode = |dir: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join("store.sqlite"))
            .map(|m| m.ino())
            .ok()
    };
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let current = inode(&ws);
    if let Some((_, _, store)) = open
        .iter()
        .find(|(dir, ino, _)| *dir == ws && Some(*ino) == current)
    {
        return Some(store.clone());
    }
    open.retain(|(dir, _, _)| *dir != ws);
    match Store::open(&ws) {
        Ok(store) => {
            let store = Arc::new(Mutex::new(store));
            if let Some(ino) = inode(&ws) {
                open.push((ws, ino, store.clone()));
            }
            Some(store)
        }
        Err(e) => {
            eprintln!("warning: results will not be cached: {e}");
            None
        }
    }
}

/// Locks a shared store; a panic in another thread that held it leaves SQLite consistent (every batch
/// is one transaction), so the store is still used.
pub fn lock(store: &SharedStore) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// Creates the schema and runs the migrations not yet run (`meta.version` counts them).
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS meta (version INTEGER NOT NULL)",
        [],
    )?;
    let version: Option<i64> = conn
        .query_row("SELECT version FROM meta", [], |r| r.get(0))
        .optional()?;
    let mut version = match version {
        Some(v) => v,
        None => {
            conn.execute("INSERT INTO meta (version) VALUES (0)", [])?;
            0
        }
    };
    while (version as usize) < MIGRATIONS.len() {
        conn.execute(MIGRATIONS[version as usize], [])?;
        version += 1;
        conn.execute("UPDATE meta SET version = ?1", params![version])?;
    }
    Ok(())
}

/// How long an opener or a writer waits for another process's lock on the store.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `step` again while SQLite says the database is busy or locked, for up to `BUSY_TIMEOUT`.
fn retry_while_busy(
    mut step: impl FnMut() -> Result<(), rusqlite::Error>,
) -> Result<(), rusqlite::Error> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            done => return done,
        }
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the store of a workspace directory.
    pub fn open(workspace: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(workspace).map_err(|source| StoreError::Io {
            path: workspace.display().to_string(),
            source,
        })?;
        let path = workspace.join("store.sqlite");
        let shown = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // Two processes may open a new store at once. Each step below can meet a lock SQLite will
        // not wait for under the busy timeout (both hold the new file's read lock and ask to switch
        // it to WAL: one is told "database is locked" at once, to break the deadlock), so the steps
        // are retried until the same timeout runs out.
        retry_while_busy(|| {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // The schema is created and migrated inside one IMMEDIATE transaction (a write lock
            // taken up front), so exactly one opener runs each migration.
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let migrated = migrate(&conn).and_then(|()| conn.execute_batch("COMMIT"));
            if migrated.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            migrated
        })
        .map_err(err)?;
        Ok(Store { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// A cached verdict, by key.
    pub fn get_verify(&self, key: &str) -> Result<Option<StoredVerdict>, StoreError> {
        self.conn
            .query_row(
                "SELECT report, code, attempts, provisional, limits FROM verify_results WHERE key = ?1",
                params![key],
                |r| {
                    Ok(StoredVerdict {
                        report: r.get(0)?,
                        code: r.get(1)?,
                        attempts: r.get(2)?,
                        provisional: r.get::<_, i64>(3)? != 0,
                        limits: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn put_verify(&self, key: &str, v: &StoredVerdict) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO verify_results (key, report, created, code, attempts, provisional, limits) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![key, v.report, now(), v.code, v.attempts, v.provisional as i64, v.limits],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn get_response(&self, key: &str) -> Result<Option<Recorded>, StoreError> {
        self.conn
            .query_row(
                "SELECT key, model, request, response, prompt_tokens, completion_tokens, served_by FROM llm_responses WHERE key = ?1",
                params![key],
                |r| Ok(Recorded { key: r.get(0)?, model: r.get(1)?, request: r.get(2)?, response: r.get(3)?, prompt_tokens: r.get(4)?, completion_tokens: r.get(5)?, served_by: r.get(6)? }),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn put_response(&self, rec: &Recorded) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO llm_responses (key, model, request, response, prompt_tokens, completion_tokens, created, served_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![rec.key, rec.model, rec.request, rec.response, rec.prompt_tokens, rec.completion_tokens, now(), rec.served_by],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every recorded response, by key (for exporting a cassette).
    pub fn all_responses(&self) -> Result<Vec<Recorded>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, model, request, response, prompt_tokens, completion_tokens, served_by FROM llm_responses ORDER BY key")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Recorded {
                    key: r.get(0)?,
                    model: r.get(1)?,
                    request: r.get(2)?,
                    response: r.get(3)?,
                    prompt_tokens: r.get(4)?,
                    completion_tokens: r.get(5)?,
                    served_by: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn add_run(
        &self,
        name: &str,
        model: &str,
        options: &str,
        dataset_hash: &str,
        metrics: &str,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (name, model, options, dataset_hash, metrics, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, model, options, dataset_hash, metrics, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, name, model, options, dataset_hash, metrics, created FROM runs ORDER BY id").map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    model: r.get(2)?,
                    options: r.get(3)?,
                    dataset_hash: r.get(4)?,
                    metrics: r.get(5)?,
                    created: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Runs `f` in one transaction (batches write thousands of rows). IMMEDIATE: the write lock is
    /// taken at the start, under the busy timeout, so a second process waits instead of failing with
    /// "database is locked" at commit. A failed transaction is rolled back whole; earlier ones stay.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        let result = f(self).and_then(|v| {
            self.conn
                .execute_batch("COMMIT")
                .map(|_| v)
                .map_err(|e| self.err(e))
        });
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    #[cfg(test)]
    pub fn count_verify(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM verify_results", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_keeps_rows_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let verdict = StoredVerdict {
            report: "{\"score\":1.0}".into(),
            code: "v2".into(),
            attempts: 1,
            provisional: true,
            limits: "{}".into(),
        };
        s.put_verify("k", &verdict).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get_verify("k").unwrap(), Some(verdict));
        assert_eq!(s.get_verify("missing").unwrap(), None);
        assert_eq!(s.count_verify().unwrap(), 1);
    }

    /// A store written before verdicts named their verifier keeps its rows, marked as made by an
    /// unknown verifier (code ''), so they are verified again rather than served.
    #[test]
    fn verdicts_from_before_code_identities_read_back_as_made_by_an_unknown_verifier() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("store.sqlite")).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (version INTEGER NOT NULL); INSERT INTO meta VALUES (3);",
            )
            .unwrap();
            for m in &MIGRATIONS[..3] {
                conn.execute(m, []).unwrap();
            }
            conn.execute(
                "INSERT INTO verify_results (key, report, created) VALUES ('old', '{}', 0)",
                [],
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let old = s.get_verify("old").unwrap().unwrap();
        assert_eq!(
            (old.code.as_str(), old.attempts, old.provisional),
            ("", 1, false)
        );
    }

    /// Two `rtlab run`s started together both create the store: SQLite answers a lock it cannot wait
    /// for (both readers of a new file asking to switch it to WAL) with "database is locked" at once,
    /// without the busy timeout. Every opener must still get the store, and the schema once.
    #[test]
    fn many_openers_of_a_new_store_at_once_all_get_it() {
        for _ in 0..30 {
            let dir = tempfile::tempdir().unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (dir, start) = (dir.path().to_path_buf(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        Store::open(&dir).map(|_| ()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for opener in openers {
                opener.join().unwrap().unwrap();
            }
            let s = Store::open(dir.path()).unwrap();
            let versions: i64 = s
                .conn
                .query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0))
                .unwrap();
            assert_eq!(versions, 1);
        }
    }
}
