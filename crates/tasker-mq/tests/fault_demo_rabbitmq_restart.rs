//! `tasker-mq demo` on RabbitMQ through a full broker restart mid-run (`rabbitmqctl stop`, a
//! pause, `rabbitmq-server -detached`): the run finishes with every task accounted for,
//! nothing left in the queues, the summary shows the outage (retries, breaker openings, time
//! degraded), and it takes no longer than a fault-free run plus the outage plus a few seconds.
//! Its own test binary (see `fault_support`).

mod fault_support;

use std::time::Duration;

use fault_support::*;

const DOWN: Duration = Duration::from_secs(2);

#[test]
fn demo_on_rabbitmq_rides_through_a_broker_restart() {
    if !require(rabbit_controllable()) {
        return;
    }
    let _guard = BrokerGuard;
    let plan = DemoPlan {
        provider: "rabbitmq",
        tasks: 2_000,
        concurrency: 0,
    };
    fresh_queues(plan.provider);
    let baseline = baseline(&plan, "rabbitmq_restart");

    let run = spawn_demo(&plan, "rabbitmq_restart");
    std::thread::sleep(baseline.mul_f64(0.3).max(Duration::from_millis(500)));
    let outage = rabbit_restart(DOWN).expect("restart the broker");
    let finished = run
        .finish(baseline + outage + Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    report("rabbitmq restart", outage, baseline, &finished);
    check_accounted(&plan, &finished);
    let faults = faults(&finished);
    assert!(
        faults["retried_operations"].as_u64().unwrap() > 0,
        "{faults}"
    );
    assert!(
        faults["breaker_openings"].as_u64().unwrap() >= 1,
        "{faults}"
    );
    let degraded = faults["degraded_secs"].as_f64().unwrap();
    assert!(
        degraded >= 1.0 && degraded <= outage.as_secs_f64() + 10.0,
        "time degraded {degraded:.1} s for an outage of {outage:?}"
    );
    assert!(
        finished.wall <= baseline + outage + Duration::from_secs(10),
        "{:?} against {baseline:?} without faults and an outage of {outage:?}",
        finished.wall
    );
}
