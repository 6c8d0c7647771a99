//! The data path's threads. Each worker is a single-threaded runtime with its own listener on
//! the HBONE port (`SO_REUSEPORT`: the kernel spreads connections over them), its own upstream
//! HTTP and HBONE pools, and so no wake-ups between threads while a request is served.
//! Shared between workers: the mesh state, the balancer (pool limits, outlier detection, load
//! counts), metrics, JWKS and certificates. The control plane (config, admin, metrics
//! endpoints, certificate renewal) stays on the main thread, so a config change never stalls
//! a request.
//!
//! Why not one work-stealing runtime: with two workers each request paid two `futex` wake-ups,
//! and one worker served about a third more requests per core (docs/benchmarks.md, session 9).
//! The cost: one HBONE connection, with all of its streams, is served by one thread, as in
//! Envoy. Agents open one per node (more past 256 streams), so load spreads by client node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::route::Inputs;
use crate::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the HBONE port {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("starting worker thread {0}: {1}")]
    Thread(usize, std::io::Error),
    #[error("worker {0} stopped: {1}")]
    Stopped(usize, String),
}

/// `n` listeners on `addr`, bound now so that a port conflict fails start-up. With port 0,
/// they share the port the first one got.
pub fn bind(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, Error> {
    let first = listener(addr).map_err(|e| Error::Bind(addr, e))?;
    let addr = first.local_addr().map_err(|e| Error::Bind(addr, e))?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listener(addr).map_err(|e| Error::Bind(addr, e))?);
    }
    Ok(all)
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// What is shared between workers; `inputs` builds each worker's own `Inputs` (its upstream
/// pools) and runs on that worker's thread.
pub struct Workers {
    stopped: mpsc::Receiver<Error>,
}

impl Workers {
    pub fn start<F>(
        listeners: Vec<std::net::TcpListener>,
        secrets: Secrets,
        sweep: Duration,
        inputs: F,
    ) -> Result<Self, Error>
    where
        F: Fn() -> Arc<Inputs> + Send + Sync + 'static,
    {
        let inputs = Arc::new(inputs);
        let (tx, stopped) = mpsc::channel(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let (inputs, secrets, tx) = (inputs.clone(), secrets.clone(), tx.clone());
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let error = match run(listener, inputs(), secrets, sweep) {
                        Ok(()) => "its listener closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let _ = tx.blocking_send(Error::Stopped(i, error));
                })
                .map_err(|e| Error::Thread(i, e))?;
        }
        Ok(Workers { stopped })
    }

    /// Resolves when a worker has stopped: the process should exit and be restarted.
    pub async fn stopped(&mut self) -> Error {
        match self.stopped.recv().await {
            Some(e) => e,
            None => Error::Stopped(0, "every worker is gone".into()),
        }
    }
}

fn run(
    listener: std::net::TcpListener,
    inputs: Arc<Inputs>,
    secrets: Secrets,
    sweep: Duration,
) -> std::io::Result<()> {
    let scheduling = inputs.config.worker_scheduling;
    // Only a cost, never a fault: the worker serves either way.
    if let Err(e) = lanyard_core::runtime::set_thread_scheduling(scheduling) {
        tracing::warn!(?scheduling, "scheduling policy not applied: {e}");
    }
    lanyard_core::runtime::build(1)?.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let idle = inputs.config.pool_idle_timeout;
        let swept = inputs.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            loop {
                tick.tick().await;
                swept.upstream.sweep(idle);
            }
        });
        crate::inbound::serve(listener, inputs, secrets).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_port_and_each_accepts() {
        let all = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = all[0].local_addr().unwrap();
        assert!(all.iter().all(|l| l.local_addr().unwrap() == addr));
        // SO_REUSEPORT spreads connections by hash: some of 64 reach a second listener.
        let _conns: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let accepting = all.iter().filter(|l| l.accept().is_ok()).count();
        assert!(
            accepting >= 2,
            "connections reached {accepting} listener(s)"
        );
    }

    #[test]
    fn a_taken_port_fails_start_up_with_its_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr, 2).unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()), "{e}");
    }
}
