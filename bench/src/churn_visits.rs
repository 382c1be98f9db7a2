//! Visits that come and go during a measurement (`--churn-every`): each a booked 1:1 visit
//! whose two participants join, send media both ways for `--churn-visit-secs`, leave, and
//! whose meeting is then cancelled. Joins, leaves and bookings run through the whole
//! measurement, so a soak shows what they leave behind in the server (memory, state) and
//! whether they disturb the steady visits. Their own media is not counted in the report.

use crate::deployment::Deployment;
use crate::generator::ToMedia;
use crate::load_run::{Joining, participant};
use crate::scenario::Planned;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a churn visit starts, and how long each lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChurnOptions {
    pub every: Duration,
    pub visit: Duration,
}

/// One churn visit while it runs.
struct Visit {
    ends: Instant,
    stop: watch::Sender<bool>,
    participants: Vec<JoinHandle<anyhow::Result<Option<usize>>>>,
    meeting: String,
}

/// The churn visits of one run.
pub struct ChurnVisits {
    options: ChurnOptions,
    deployment: Deployment,
    api: reqwest::Client,
    tls: Option<Arc<rustls::ClientConfig>>,
    run: String,
    to_media: Sender<ToMedia>,
    next: Instant,
    started: u64,
    running: VecDeque<Visit>,
    /// Visits that ran their course (joined, left, cancelled).
    pub ended: u64,
    /// Visits, or steps of one, that failed (booking, joining, cancelling).
    pub failed: u64,
    pub first_error: Option<String>,
}

impl ChurnVisits {
    pub fn new(
        options: ChurnOptions,
        deployment: Deployment,
        run: &str,
        to_media: Sender<ToMedia>,
        now: Instant,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            options,
            api: deployment.http()?,
            tls: Some(deployment.tls()?),
            deployment,
            run: format!("{run}-churn"),
            to_media,
            next: now,
            started: 0,
            running: VecDeque::new(),
            ended: 0,
            failed: 0,
            first_error: None,
        })
    }

    fn failure(&mut self, e: anyhow::Error) {
        self.failed += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }

    /// Ends the visits whose time is up and starts the one due at `now`.
    pub async fn step(&mut self, now: Instant) {
        while self.running.front().is_some_and(|v| v.ends <= now) {
            if let Some(v) = self.running.pop_front() {
                self.end(v).await;
            }
        }
        if now >= self.next {
            self.next = now + self.options.every;
            if let Err(e) = self.start(now).await {
                self.failure(e);
            }
        }
    }

    /// Ends every visit still running.
    pub async fn finish(&mut self) {
        while let Some(v) = self.running.pop_front() {
            self.end(v).await;
        }
    }

    async fn start(&mut self, now: Instant) -> anyhow::Result<()> {
        let n = self.started;
        self.started += 1;
        let plan: Vec<Planned> = ["a", "b"]
            .iter()
            .map(|side| Planned {
                meeting: 0,
                name: format!("c{n}-{side}"),
                publish: true,
            })
            .collect();
        let run = format!("{}{n}", self.run);
        let (ids, tokens) = self.deployment.book(&self.api, &plan, &run).await?;
        let (stop, stop_rx) = watch::channel(false);
        let participants = plan
            .iter()
            .zip(&tokens)
            .map(|(p, token)| {
                tokio::spawn(participant(
                    Joining {
                        url: self.deployment.ws_url(token),
                        name: p.name.clone(),
                        publish: true,
                        sampled: false,
                        tcp: false,
                        tls: self.tls.clone(),
                        measured: false,
                    },
                    self.to_media.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        self.running.push_back(Visit {
            ends: now + self.options.visit,
            stop,
            participants,
            meeting: ids.into_iter().next().unwrap_or_default(),
        });
        Ok(())
    }

    /// Its participants leave (their media stops), then its meeting is cancelled.
    async fn end(&mut self, visit: Visit) {
        let _ = visit.stop.send(true);
        let mut ok = true;
        // Each retires its own media participant as it ends (an unmeasured one does).
        for mut handle in visit.participants {
            match tokio::time::timeout(Duration::from_secs(5), &mut handle).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => {
                    ok = false;
                    self.failure(e.context("a churn participant"));
                }
                Ok(Err(e)) => {
                    ok = false;
                    self.failure(anyhow::anyhow!("a churn participant's task: {e}"));
                }
                Err(_) => {
                    // Its socket closes with the task; its media participant stays until
                    // the run ends (the generator is told nothing of an aborted task).
                    handle.abort();
                    ok = false;
                    self.failure(anyhow::anyhow!(
                        "a churn participant did not leave within 5 s"
                    ));
                }
            }
        }
        if let Err(e) = self
            .deployment
            .cancel(&self.api, std::slice::from_ref(&visit.meeting))
            .await
        {
            ok = false;
            self.failure(e.context("cancelling a churn visit"));
        }
        self.ended += u64::from(ok);
    }
}
