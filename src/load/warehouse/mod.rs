//! The warehouse interface: every destination rin-ship loads into implements [`Driver`] (how
//! to reach it, what a load would run) and [`Warehouse`] (one open session that loads a group
//! exactly once, through the ledger contract of [`crate::load::ledger`]). The import loop,
//! backfill, the Lambda handler and the embedded loader drive only this interface
//! ([`Sessions`]).
//!
//! One folder per warehouse:
//! - [`postgres`]: PostgreSQL over the wire protocol; rin-ship streams the objects in.
//! - [`redshift`]: Amazon Redshift over the wire protocol; the cluster reads S3 (its SQL
//!   dialect, [`redshift::sql`], serves the Data API too).
//! - `dataapi`: the Redshift Data API (`--features redshift`).
//! - [`sqlite`]: the embedded warehouse of `rin-ship serve`.
//!
//! and what they share: the wire protocol ([`wire`]), object bytes as NDJSON lines
//! ([`ndjson`]), what a wire-protocol warehouse says about itself ([`stats`]), the ledger's
//! part of a shown load ([`dry_run`]). A new warehouse is a new folder, a [`DriverKind`] and
//! one line in [`driver`].
//!
//! Must never: load a group outside the ledger contract; hand a failure back unclassified.

#[cfg(feature = "redshift")]
pub mod dataapi;
pub mod dry_run;
pub mod ndjson;
pub mod postgres;
pub mod redshift;
pub mod sqlite;
pub mod stats;
pub mod wire;

#[cfg(test)]
pub mod conformance;
#[cfg(test)]
mod testpg;

use super::ledger::{Group, Item, ItemResult, LoadFailure};
use super::rin::{Destination, DriverKind, Redshift, RinConfig, Target};
use crate::store::{Body, Fetched, Objects};
use async_trait::async_trait;
use std::collections::HashMap;
use tracing::{info, warn};

/// What a load reads besides its group: the config and where the objects are.
pub struct Env<'a> {
    pub cfg: &'a RinConfig,
    pub objects: &'a Objects,
}

/// A kind of warehouse.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Opens a session on the warehouse `conn` describes, its ledger created if missing.
    async fn connect(
        &self,
        env: &Env<'_>,
        conn: &Redshift,
    ) -> Result<Box<dyn Warehouse>, LoadFailure>;

    /// What a load of `objects` (bucket, key) into `dest` would run, secrets masked, one line
    /// each (`rin-ship import --dry-run`): the whole transaction, the ledger's statements
    /// ([`dry_run::LedgerShown`]) beside the driver's own. Contacts nothing.
    #[cfg_attr(not(all(feature = "s3", feature = "sqs")), allow(dead_code))]
    fn dry_run(&self, cfg: &RinConfig, dest: &Destination, objects: &[(&str, &str)])
    -> Vec<String>;
}

/// An open session on one warehouse.
#[async_trait]
pub trait Warehouse: Send {
    /// Loads `group` exactly once: the rows of its new objects commit together with their
    /// ledger rows, or nothing does; objects the ledger holds are [`ItemResult::Duplicate`].
    /// Results are in the order of `group.items`.
    async fn load(&mut self, env: &Env<'_>, group: &Group) -> Result<Vec<ItemResult>, LoadFailure>;

    /// False once the session cannot take another load (its connection dropped): the next
    /// group opens a new one.
    fn is_open(&self) -> bool {
        true
    }
}

/// The driver of each kind: the one line of wiring per warehouse.
pub fn driver(kind: DriverKind) -> Box<dyn Driver> {
    match kind {
        DriverKind::Postgres => Box::new(postgres::Postgres),
        DriverKind::Redshift => Box::new(redshift::Redshift),
        #[cfg(feature = "redshift")]
        DriverKind::RedshiftData => Box::new(dataapi::DataApiDriver::default()),
        // Refused at config load in such a build already.
        #[cfg(not(feature = "redshift"))]
        DriverKind::RedshiftData => Box::new(NotBuilt("the Data API driver", "redshift")),
        DriverKind::Sqlite => Box::new(sqlite::Sqlite),
    }
}

/// A driver this build leaves out: every load fails, saying which feature brings it.
#[cfg(not(feature = "redshift"))]
struct NotBuilt(&'static str, &'static str);

#[cfg(not(feature = "redshift"))]
#[async_trait]
impl Driver for NotBuilt {
    async fn connect(&self, _: &Env<'_>, _: &Redshift) -> Result<Box<dyn Warehouse>, LoadFailure> {
        Err(LoadFailure::new(
            super::ledger::ErrorKind::Other,
            format!(
                "{} is not in this rin-ship: build it with `--features {}`",
                self.0, self.1
            ),
        ))
    }

    fn dry_run(&self, _: &RinConfig, _: &Destination, _: &[(&str, &str)]) -> Vec<String> {
        vec![format!(
            "({} is not in this build: --features {})",
            self.0, self.1
        )]
    }
}

/// The drivers a config's targets use, made once per process (the Data API keeps its client
/// in its driver).
pub struct Drivers(HashMap<DriverKind, Box<dyn Driver>>);

impl Drivers {
    pub fn for_config(cfg: &RinConfig) -> Drivers {
        let mut map = HashMap::new();
        for t in cfg.targets.iter().filter(|t| !t.discard) {
            map.entry(t.driver).or_insert_with(|| driver(t.driver));
        }
        Drivers(map)
    }

    pub fn of(&self, target: &Target) -> &dyn Driver {
        self.0
            .get(&target.driver)
            .map(|d| d.as_ref())
            .expect("a driver for every loading target (Drivers::for_config)")
    }
}

/// The open sessions of one worker, one per connection (targets may differ in connection).
/// A failed load closes its session when the connection dropped, and with Rin's
/// `redshift.reconnect_on_error` after any failure (a session left in a bad state by a
/// maintenance window or a failover is not reused); the next load opens a new one.
#[derive(Default)]
pub struct Sessions {
    open: HashMap<Redshift, Box<dyn Warehouse>>,
}

impl Sessions {
    /// Loads `group` on the connection of `target`, opening it on first use or after it
    /// was closed.
    pub async fn load(
        &mut self,
        drivers: &Drivers,
        env: &Env<'_>,
        target: &Target,
        group: &Group,
    ) -> Result<Vec<ItemResult>, LoadFailure> {
        let conn = target.redshift.without_table();
        if self.open.get(&conn).is_some_and(|s| !s.is_open()) {
            self.open.remove(&conn);
        }
        if !self.open.contains_key(&conn) {
            let session = drivers.of(target).connect(env, &conn).await?;
            self.open.insert(conn.clone(), session);
        }
        let session = self.open.get_mut(&conn).expect("inserted above");
        let r = session.load(env, group).await;
        if r.is_err() && (!session.is_open() || conn.reconnect_on_error) {
            if session.is_open() {
                info!(
                    connection = %conn.visible_dsn(),
                    "reconnect_on_error: closing the connection after the failed load; the next \
                     load opens a new one"
                );
            }
            self.open.remove(&conn);
        }
        r
    }
}

/// Opens object `i` of a group: `None` when it is gone (its successor's event loads the new
/// content); a read failure is transient.
pub async fn open_object(
    objects: &Objects,
    it: &Item,
    i: usize,
) -> Result<Option<Body>, LoadFailure> {
    match objects.open(it.object()).await {
        Ok(Fetched::Body(b)) => Ok(Some(b)),
        Ok(Fetched::Gone) => {
            warn!(object = %it.url(), "object gone or replaced; not loading it");
            Ok(None)
        }
        Err(e) => Err(LoadFailure::new(
            crate::load::ledger::ErrorKind::Transient,
            format!("{e:#}"),
        )
        .unreadable()
        .of_item(i)),
    }
}
