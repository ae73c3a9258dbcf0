//! Embedded SQLite store (WAL, schema migrations, deduplication by series and timestamp).

use std::path::Path;

use super::{FsyncPolicy, Query, Row, SensorStats, Store, StoreError, StoredReading, WriteOutcome};

#[derive(Debug)]
pub struct SqliteStore {}

impl SqliteStore {
    pub fn open(_path: &Path, _fsync: FsyncPolicy) -> Result<Self, StoreError> {
        unimplemented!()
    }
}

impl Store for SqliteStore {
    fn write_batch(&mut self, _batch: &[StoredReading]) -> Result<WriteOutcome, StoreError> {
        unimplemented!()
    }
    fn query(&mut self, _query: &Query) -> Result<Vec<Row>, StoreError> {
        unimplemented!()
    }
    fn sensor_stats(&mut self) -> Result<Vec<SensorStats>, StoreError> {
        unimplemented!()
    }
    fn close(&mut self) -> Result<(), StoreError> {
        unimplemented!()
    }
}
