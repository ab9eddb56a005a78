//! The shutdown signal handed to every long-running subcommand.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future that resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub struct Signal {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Signal {
    /// Starts listening for SIGINT and SIGTERM. Must be called inside a tokio runtime.
    pub fn new() -> Self {
        Signal {
            inner: Box::pin(async {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    match signal(SignalKind::terminate()) {
                        Ok(mut term) => {
                            tokio::select! {
                                _ = tokio::signal::ctrl_c() => {}
                                _ = term.recv() => {}
                            }
                        }
                        Err(_) => {
                            let _ = tokio::signal::ctrl_c().await;
                        }
                    }
                }
                #[cfg(not(unix))]
                {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }),
        }
    }
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

impl Future for Signal {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}
