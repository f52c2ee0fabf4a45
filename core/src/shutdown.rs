//! Graceful shutdown for annals' long-running loops (projection runners,
//! saga dispatchers, refresh jobs).

use std::time::Duration;

use tokio::sync::watch;

/// The receiving side: a loop checks it between units of work and while
/// waiting. Cloning gives another receiver of the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The sending side: [`trigger`](ShutdownTrigger::trigger) asks every
/// [`Shutdown`] made from it to stop. Dropping it triggers too.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    /// A trigger and its receiver.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// let (trigger, mut shutdown) = annals::Shutdown::new();
    /// assert!(!shutdown.is_triggered());
    /// trigger.trigger();
    /// assert!(shutdown.sleep(Duration::from_secs(60)).await); // returns at once
    /// # });
    /// ```
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// A receiver that is never triggered.
    pub fn never() -> Shutdown {
        // one sender for the whole process, never triggered nor dropped
        static NEVER: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
        Shutdown {
            receiver: NEVER.get_or_init(|| watch::channel(false).0).subscribe(),
        }
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Waits until shutdown is asked for.
    pub async fn triggered(&mut self) {
        // an error means the trigger was dropped: that counts as a trigger
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `duration` unless shutdown is asked for first. Returns
    /// `true` when it was (stop now), `false` after a full sleep.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        if self.is_triggered() {
            return true;
        }
        tokio::select! {
            _ = self.triggered() => true,
            _ = tokio::time::sleep(duration) => self.is_triggered(),
        }
    }
}

impl ShutdownTrigger {
    /// Asks every receiver to stop.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Another receiver of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.sender.send_replace(true);
    }
}
