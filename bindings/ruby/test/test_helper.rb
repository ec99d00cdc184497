# frozen_string_literal: true

require "minitest/autorun"
require "securerandom"
require "open3"
require "tasker_core"

module TestSupport
  Messaging = TaskerCore::Messaging
  Factory = TaskerCore::Services::MessageServiceFactory

  DATABASE_URL = ENV.fetch("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/test")
  AMQP_URL = ENV.fetch("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

  # A queue name no other test (nor an earlier run) uses.
  def unique_queue(prefix)
    "rb_#{prefix}_#{SecureRandom.hex(6)}"
  end

  def memory_service(**config)
    Factory.create(provider: :in_memory, env: false, **config)
  end

  def pgmq_config
    { provider: :pgmq, env: false,
      connection: { pgmq: { database_url: DATABASE_URL, install_sql: true, pool_size: 2 } } }
  end

  def rabbitmq_config
    { provider: :rabbitmq, env: false, connection: { rabbitmq: { url: AMQP_URL } } }
  end

  # A service on a shared server; skips when the server cannot be reached, fails under CI=true
  # (where scripts/services/*.sh started it).
  def service_or_skip(config)
    Factory.create(config)
  rescue Messaging::ConnectionError, Messaging::TimeoutError => e
    flunk("#{config[:provider]} unreachable under CI: #{e.message}") if ENV["CI"] == "true"
    skip("#{config[:provider]} unreachable: #{e.message}")
  end

  # The CLI, built by the main workspace.
  def tasker_mq(*args, env: {})
    bin = ENV.fetch("TASKER_CLI_BIN") { File.expand_path("../../../target/debug/tasker-mq", __dir__) }
    unless File.executable?(bin)
      flunk("tasker-mq CLI not built at #{bin}") if ENV["CI"] == "true"
      skip("tasker-mq CLI not built at #{bin} (bindings/ruby/test.sh builds it)")
    end
    out, err, status = Open3.capture3(env, bin, *args)
    assert status.success?, "tasker-mq #{args.join(' ')} failed: #{err}"
    out
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
