//! The config source's health as metrics, on the binary's registry.

use prometheus::{IntGauge, Registry};
use tokio::sync::watch;

use crate::source::SourceStatus;

/// Registers `lanyard_config_source_connected` (0 while any watch fails) and
/// `lanyard_config_source_synced` (1 once a complete state is served), kept current by a task.
pub fn register(
    registry: &Registry,
    mut status: watch::Receiver<SourceStatus>,
) -> Result<(), prometheus::Error> {
    let connected = IntGauge::new(
        "lanyard_config_source_connected",
        "1 when every config watch is healthy; 0 while the API server is unreachable (the last good config keeps serving)",
    )?;
    let synced = IntGauge::new(
        "lanyard_config_source_synced",
        "1 once a complete config has been loaded",
    )?;
    registry.register(Box::new(connected.clone()))?;
    registry.register(Box::new(synced.clone()))?;
    tokio::spawn(async move {
        loop {
            {
                let s = status.borrow_and_update();
                connected.set(s.connected() as i64);
                synced.set(s.synced as i64);
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
