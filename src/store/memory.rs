//! In-memory store: for tests and benchmarks; lost at exit.

use super::{Query, Row, SensorStats, Store, StoreError, StoredReading, WriteOutcome};

#[derive(Debug, Default)]
pub struct MemoryStore {}

impl Store for MemoryStore {
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
        Ok(())
    }
}
