//! A resource budget shared by messaging and executor pools.
//!
//! [`ResourceBudget`] holds what the system can give (database connections and memory, from
//! [`SystemResourceLimits`] under [`ResourceValidationConfig`]). Each pool reserves what it
//! holds and gets a [`BudgetReservation`] that gives it back when dropped. A reservation that
//! would exceed the budget is refused with [`MessagingError::ResourcesExceeded`] naming the
//! numbers and who holds the rest. [`initialize_within_budget`] reserves for a configured
//! messaging service *before* initializing it, so an oversized configuration never connects.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{MessagingConfig, ResourceValidationConfig};
use crate::error::{MessagingError, Result};
use crate::factory::create_service;
use crate::resources::{ResourceRequirements, SystemResourceLimits};
use crate::service::MessagingService;

#[derive(Debug, Default)]
struct Ledger {
    next_id: u64,
    /// Reservation id -> (owner, requirements).
    held: BTreeMap<u64, (String, ResourceRequirements)>,
}

impl Ledger {
    fn used(&self) -> ResourceRequirements {
        self.held
            .values()
            .fold(ResourceRequirements::default(), |acc, (_, r)| {
                ResourceRequirements {
                    db_connections: acc.db_connections + r.db_connections,
                    memory_mb: acc.memory_mb + r.memory_mb,
                }
            })
    }

    fn holders(&self) -> String {
        let mut by_owner: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
        for (owner, r) in self.held.values() {
            let e = by_owner.entry(owner).or_default();
            e.0 += r.db_connections;
            e.1 += r.memory_mb;
        }
        if by_owner.is_empty() {
            return "nothing reserved".into();
        }
        by_owner
            .iter()
            .map(|(o, (c, m))| format!("{o}: {c} connections, {m} MiB"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the shared pools may hold in total. Share it as `Arc<ResourceBudget>`.
#[derive(Debug)]
pub struct ResourceBudget {
    /// `None`: unknown, not limited.
    db_connections: Option<u32>,
    memory_mb: Option<u64>,
    enforce: bool,
    ledger: Mutex<Ledger>,
}

/// Gives its reservation back to the budget when dropped.
#[derive(Debug)]
#[must_use = "the reservation is released when this is dropped"]
pub struct BudgetReservation {
    budget: Arc<ResourceBudget>,
    id: u64,
    requirements: ResourceRequirements,
}

impl BudgetReservation {
    pub fn requirements(&self) -> &ResourceRequirements {
        &self.requirements
    }
}

impl Drop for BudgetReservation {
    fn drop(&mut self) {
        self.budget.ledger.lock().held.remove(&self.id);
    }
}

/// The budget's totals and use, for health and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetSnapshot {
    pub db_connections_total: Option<u32>,
    pub db_connections_used: u32,
    pub memory_mb_total: Option<u64>,
    pub memory_mb_used: u64,
    /// Owner -> what it holds.
    pub owners: BTreeMap<String, ResourceRequirements>,
}

impl ResourceBudget {
    /// A budget of what `limits` leave this process under `config`.
    pub fn new(limits: &SystemResourceLimits, config: &ResourceValidationConfig) -> Arc<Self> {
        Arc::new(ResourceBudget {
            db_connections: limits.available_db_connections(config),
            memory_mb: limits.available_memory_mb,
            enforce: config.enforce_limits,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// A budget with explicit totals (`None` = unlimited).
    pub fn with_totals(db_connections: Option<u32>, memory_mb: Option<u64>) -> Arc<Self> {
        Arc::new(ResourceBudget {
            db_connections,
            memory_mb,
            enforce: true,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// Reserves `requirements` for `owner`, or refuses naming the numbers.
    pub fn reserve(
        self: &Arc<Self>,
        owner: &str,
        requirements: ResourceRequirements,
    ) -> Result<BudgetReservation> {
        let mut ledger = self.ledger.lock();
        if self.enforce {
            let used = ledger.used();
            if let Some(total) = self.db_connections {
                let available = total.saturating_sub(used.db_connections);
                if requirements.db_connections > available {
                    return Err(MessagingError::ResourcesExceeded {
                        resource: format!(
                            "database connections for {owner} (budget {total}, held by {})",
                            ledger.holders()
                        ),
                        required: requirements.db_connections as u64,
                        available: available as u64,
                    });
                }
            }
            if let Some(total) = self.memory_mb {
                let available = total.saturating_sub(used.memory_mb);
                if requirements.memory_mb > available {
                    return Err(MessagingError::ResourcesExceeded {
                        resource: format!(
                            "memory MiB for {owner} (budget {total}, held by {})",
                            ledger.holders()
                        ),
                        required: requirements.memory_mb,
                        available,
                    });
                }
            }
        }
        ledger.next_id += 1;
        let id = ledger.next_id;
        ledger
            .held
            .insert(id, (owner.to_owned(), requirements.clone()));
        Ok(BudgetReservation {
            budget: self.clone(),
            id,
            requirements,
        })
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let ledger = self.ledger.lock();
        let used = ledger.used();
        let mut owners: BTreeMap<String, ResourceRequirements> = BTreeMap::new();
        for (owner, r) in ledger.held.values() {
            let e = owners.entry(owner.clone()).or_default();
            e.db_connections += r.db_connections;
            e.memory_mb += r.memory_mb;
        }
        BudgetSnapshot {
            db_connections_total: self.db_connections,
            db_connections_used: used.db_connections,
            memory_mb_total: self.memory_mb,
            memory_mb_used: used.memory_mb,
            owners,
        }
    }
}

/// What a configured service will hold: the larger of what the service states and what the
/// configuration implies (the provider's connections, `memory_per_queue_mb` per namespace queue).
pub fn requirements_for(
    config: &MessagingConfig,
    service: &dyn MessagingService,
) -> ResourceRequirements {
    let stated = service.resource_requirements();
    let queues = config.queues.namespaces.len().max(1) as u64;
    ResourceRequirements {
        db_connections: stated
            .db_connections
            .max(config.connection.required_connections(config.provider)),
        memory_mb: stated
            .memory_mb
            .max(queues * config.resource_validation.memory_per_queue_mb),
    }
}

/// Builds the configured service, reserves what it needs from `budget` (refusing before any
/// connection is made when over budget) and initializes it. Keep the reservation as long as
/// the service lives.
pub async fn initialize_within_budget(
    config: &MessagingConfig,
    budget: &Arc<ResourceBudget>,
    owner: &str,
) -> Result<(Arc<dyn MessagingService>, BudgetReservation)> {
    let service = create_service(config)?;
    let reservation = budget.reserve(owner, requirements_for(config, &*service))?;
    service.initialize().await?;
    Ok((service, reservation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(db_connections: u32, memory_mb: u64) -> ResourceRequirements {
        ResourceRequirements {
            db_connections,
            memory_mb,
        }
    }

    #[test]
    fn shared_budget_refuses_naming_numbers_and_releases_on_drop() {
        let limits = SystemResourceLimits {
            database_max_connections: Some(53),
            database_reserved_connections: 3,
            available_memory_mb: Some(1_024),
        };
        let budget = ResourceBudget::new(&limits, &ResourceValidationConfig::default());
        // 80% of (53 - 3) = 40 connections.
        assert_eq!(budget.snapshot().db_connections_total, Some(40));
        let executors = budget.reserve("executor_pool", req(30, 512)).unwrap();
        let err = budget.reserve("messaging", req(20, 64)).unwrap_err();
        match &err {
            MessagingError::ResourcesExceeded {
                resource,
                required,
                available,
            } => {
                assert_eq!((*required, *available), (20, 10));
                assert!(
                    resource.contains("budget 40") && resource.contains("executor_pool: 30"),
                    "{resource}"
                );
            }
            other => panic!("{other}"),
        }
        let messaging = budget.reserve("messaging", req(10, 64)).unwrap();
        assert!(
            budget.reserve("other", req(1, 0)).is_err(),
            "budget is full"
        );
        let err = budget
            .reserve("other", req(0, 449))
            .unwrap_err()
            .to_string();
        assert!(err.contains("449") && err.contains("448"), "{err}");
        assert_eq!(budget.snapshot().db_connections_used, 40);
        drop(executors);
        assert_eq!(budget.snapshot().db_connections_used, 10);
        let _again = budget.reserve("messaging", req(20, 64)).unwrap();
        drop(messaging);
    }

    #[test]
    fn unknown_limits_and_unenforced_budgets_admit_everything() {
        let budget = ResourceBudget::new(
            &SystemResourceLimits::unknown(),
            &ResourceValidationConfig::default(),
        );
        let _a = budget.reserve("a", req(10_000, 10_000)).unwrap();
        let limits = SystemResourceLimits {
            database_max_connections: Some(10),
            database_reserved_connections: 0,
            available_memory_mb: Some(1),
        };
        let off = ResourceValidationConfig {
            enforce_limits: false,
            ..Default::default()
        };
        let budget = ResourceBudget::new(&limits, &off);
        let _b = budget.reserve("b", req(100, 100)).unwrap();
    }

    #[tokio::test]
    async fn initialization_refuses_a_configuration_over_budget() {
        let config = MessagingConfig::from_toml_str(
            "[queues]\nnamespaces = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']\n\
             [resource_validation]\nmemory_per_queue_mb = 64",
        )
        .unwrap();
        let budget = ResourceBudget::with_totals(None, Some(512));
        let err = match initialize_within_budget(&config, &budget, "messaging").await {
            Err(e) => e,
            Ok(_) => panic!("640 MiB must not fit in 512"),
        };
        let text = err.to_string();
        assert!(text.contains("640") && text.contains("512"), "{text}");
        assert_eq!(
            budget.snapshot().memory_mb_used,
            0,
            "a refusal reserves nothing"
        );

        let budget = ResourceBudget::with_totals(None, Some(1_024));
        let (svc, reservation) = initialize_within_budget(&config, &budget, "messaging")
            .await
            .unwrap();
        assert_eq!(reservation.requirements().memory_mb, 640);
        assert!(svc.health_check().await.unwrap().is_healthy());
        assert_eq!(budget.snapshot().memory_mb_used, 640);
        drop(reservation);
        assert_eq!(budget.snapshot().memory_mb_used, 0);
    }
}
