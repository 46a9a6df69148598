//! How long the user has not touched keyboard or mouse, from whichever of the desktop's
//! idle monitors answers. The service decides what idle means for metering; the helper
//! only reads the time since the last input, and says "unknown" rather than guess.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(windows)]
pub mod windows;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so that sources of different kinds sit in one chain (an `async fn`
/// in a trait cannot be called through `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One way of reading the time since the last input.
pub trait IdleSource: Send + Sync {
    /// The source's name as the service's status shows it (`mutter`, `screensaver`…).
    fn name(&self) -> &'static str;

    /// The time since the last input; `None` when this source does not answer (absent
    /// from the session, an error, no answer in time).
    fn idle(&self) -> BoxFuture<'_, Option<Duration>>;
}

/// Sources tried in order of trust: the first that answers wins. The winner is asked
/// first next time; should it stop answering (the desktop restarted, a monitor went
/// away), the whole chain is walked again. A change of source is logged at info, so the
/// log says once which monitor this session uses without a line per report.
pub struct Chain {
    sources: Vec<Box<dyn IdleSource>>,
    /// Index of the source that answered last.
    current: Option<usize>,
    /// "No source answers" was logged and no source answered since.
    said_none: bool,
}

impl Chain {
    pub fn new(sources: Vec<Box<dyn IdleSource>>) -> Chain {
        Chain {
            sources,
            current: None,
            said_none: false,
        }
    }

    /// The time since the last input and the name of the source that told it; `None`
    /// when no source answers.
    pub async fn idle(&mut self) -> Option<(Duration, &'static str)> {
        if let Some(i) = self.current
            && let Some(idle) = self.sources[i].idle().await
        {
            return Some((idle, self.sources[i].name()));
        }
        for (i, source) in self.sources.iter().enumerate() {
            if Some(i) == self.current {
                continue;
            }
            if let Some(idle) = source.idle().await {
                tracing::info!(source = source.name(), "idle time read from this source");
                self.current = Some(i);
                self.said_none = false;
                return Some((idle, source.name()));
            }
        }
        self.current = None;
        if !self.said_none {
            tracing::info!("no idle monitor answers in this session; idle is reported unknown");
            self.said_none = true;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Answers its value in ms; `u64::MAX` means no answer.
    struct Fixed(&'static str, Arc<AtomicU64>);

    impl IdleSource for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn idle(&self) -> BoxFuture<'_, Option<Duration>> {
            let v = self.1.load(Ordering::SeqCst);
            Box::pin(async move { (v != u64::MAX).then(|| Duration::from_millis(v)) })
        }
    }

    #[tokio::test]
    async fn the_first_source_that_answers_wins_and_a_silent_one_is_passed_over() {
        let a = Arc::new(AtomicU64::new(u64::MAX));
        let b = Arc::new(AtomicU64::new(5));
        let mut chain = Chain::new(vec![
            Box::new(Fixed("a", a.clone())),
            Box::new(Fixed("b", b.clone())),
        ]);
        assert_eq!(chain.idle().await, Some((Duration::from_millis(5), "b")));
        a.store(7, Ordering::SeqCst);
        // The winner keeps answering: it is asked first.
        assert_eq!(chain.idle().await, Some((Duration::from_millis(5), "b")));
        b.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(chain.idle().await, Some((Duration::from_millis(7), "a")));
        a.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(chain.idle().await, None);
    }
}
