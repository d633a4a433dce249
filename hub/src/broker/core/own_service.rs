//! The broker's own service (RFC 8's `mmi.*` namespace): answers built from
//! the routing state, in [`Broker::handle`]'s thread, never queued.

use proto::mmi;
use serde_json::json;

use super::{lossy, Broker, OwnedFrame};

impl<F: OwnedFrame> Broker<F> {
    pub(super) fn answer_mmi(&self, request: mmi::Request<'_>) -> Vec<u8> {
        let has_workers =
            |name: &[u8]| self.service_ids.get(name).is_some_and(|&sid| self.services[sid].workers > 0);
        match request {
            mmi::Request::Service { name } => {
                let status = if has_workers(name) { mmi::Status::Ok } else { mmi::Status::NotFound };
                status.as_bytes().to_vec()
            }
            mmi::Request::Services => {
                let mut names: Vec<String> = self
                    .services
                    .iter()
                    .filter(|(_, s)| s.workers > 0)
                    .map(|(_, s)| lossy(&s.name))
                    .collect();
                names.sort();
                json!(names).to_string().into_bytes()
            }
            mmi::Request::Workers => {
                let services: serde_json::Map<String, serde_json::Value> = self
                    .services
                    .iter()
                    .map(|(_, s)| {
                        let stats = json!({
                            "workers": s.workers,
                            "idle": s.idle.len(),
                            "queued": s.queue.len(),
                            "queued_bytes": s.queued_bytes,
                        });
                        (lossy(&s.name), stats)
                    })
                    .collect();
                serde_json::Value::Object(services).to_string().into_bytes()
            }
            mmi::Request::Metrics => {
                let mut metrics = self.counters.to_json();
                metrics["workers"] = json!(self.workers.len());
                metrics["services"] = json!(self.services.len());
                metrics["queued"] = json!(self.services.iter().map(|(_, s)| s.queue.len()).sum::<usize>());
                metrics["queued_bytes"] = json!(self.queued_bytes);
                if let Some(security) = &self.security {
                    metrics["denials"] = security.denials.to_json();
                }
                metrics.to_string().into_bytes()
            }
            mmi::Request::Unknown => mmi::Status::NotImplemented.as_bytes().to_vec(),
        }
    }
}
