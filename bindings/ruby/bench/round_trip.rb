# frozen_string_literal: true

# Round-trip throughput of the Ruby binding on the in-memory provider, and the binding's
# per-call overhead. Run on a release build:
#
#   bindings/ruby/bench.sh            # = build.sh --release, then this script
#
# Environment: MESSAGES (default 200000 per run), BATCH (default 100), RUNS (default 3).
require "tasker_core"

MESSAGES = Integer(ENV.fetch("MESSAGES", "200000"))
BATCH = Integer(ENV.fetch("BATCH", "100"))
RUNS = Integer(ENV.fetch("RUNS", "3"))

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

service = TaskerCore::Services::MessageServiceFactory.create(provider: :in_memory, env: false)
native = service.native
steps = Array.new(BATCH) { TaskerCore::Types::SimpleStepMessage.random }
raw = steps.map(&:to_json)

# One measured loop: send_batch + receive + ack of BATCH messages until MESSAGES went round.
def round_trips(service, queue, total, batch)
  started = now
  done = 0
  while done < total
    yield
    got = service.receive_raw(queue, max_messages: batch)
    raise "received #{got.size} of #{batch}" unless got.size == batch

    result = service.delete_messages(queue, got)
    raise "acks refused" unless result.rejected.empty?

    done += got.size
  end
  total / (now - started)
end

def best(label, unit = "msg/s")
  rates = Array.new(RUNS) { yield }
  sorted = rates.sort
  puts format("%-58s best %10.0f %s  (runs: %s)", label, sorted.last, unit,
              rates.map { |r| format("%.0f", r) }.join(", "))
  sorted.last
end

puts "ruby #{RUBY_VERSION}, #{MESSAGES} messages per run, batches of #{BATCH}, #{RUNS} runs"
queue = "bench_rt_#{Process.pid}"
service.create_queue(queue)

# 1. The issue's figure: SimpleStepMessages as JSON (encoded per send), decoded on receive.
best("send_batch(steps) + receive_messages(as:) + ack") do
  started = now
  done = 0
  while done < MESSAGES
    service.send_batch(queue, steps)
    got = service.receive_messages(queue, max_messages: BATCH, as: TaskerCore::Types::SimpleStepMessage)
    raise "received #{got.size}" unless got.size == BATCH

    service.ack(queue, got)
    done += BATCH
  end
  MESSAGES / (now - started)
end

# 2. The same without JSON: payload bytes made once (the binding and the library only).
best("send_raw batch + receive_raw + delete_messages (no JSON)") do
  round_trips(service, queue, MESSAGES, BATCH) { native.send_batch(queue, raw, nil, nil, 0.0) }
end

# 3. One message per call: send_message + receive_messages + delete_message.
single = MESSAGES / 10
best("one message per call: send + receive + ack") do
  started = now
  single.times do
    service.send_message(queue, steps[0])
    got = service.receive_messages(queue, max_messages: 1)
    service.delete_message(queue, got[0])
  end
  single / (now - started)
end

# 4. Per-call overhead of the blocking path: a call that does nothing but cross into Rust, find
# its future pending at the first poll (sleep(0) yields once), release the GVL, finish it on the
# shared runtime and come back. A call whose future is ready at once keeps the GVL (5.).
calls = Integer(ENV.fetch("CALLS", "50000"))
rate = best("native call that releases the GVL (sleep 0)", "calls/s") do
  started = now
  calls.times { TaskerCore::Native::Service.sleep(0.0) }
  calls / (now - started)
end
puts format("  => per-call overhead of the binding: %.2f us", 1e6 / rate)

# 5. A cheap library call through the whole binding (stats: no message moved; ready at the first
# poll on the in-memory provider, so the GVL is kept).
rate = best("queue_stats (one library call, Hash built)", "calls/s") do
  started = now
  calls.times { service.queue_stats(queue) }
  calls / (now - started)
end
puts format("  => %.2f us per queue_stats call", 1e6 / rate)
service.delete_queue(queue)
