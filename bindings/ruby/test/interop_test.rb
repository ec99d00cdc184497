# frozen_string_literal: true

require_relative "test_helper"

# Ruby and Rust on one queue: a Ruby producer with the CLI (tasker-mq, Rust) as consumer, and
# back, on PGMQ and on RabbitMQ.
module InteropCases
  include TestSupport

  def setup
    @service = service_or_skip(config)
    @queue = unique_queue("interop")
    @service.create_queue(@queue)
  end

  def teardown
    @service&.delete_queue(@queue)
  rescue TaskerCore::Messaging::Error
    nil
  end

  def cli(*args)
    tasker_mq("--provider", config[:provider].to_s, *args, env: cli_env)
  end

  def test_a_ruby_producer_and_a_rust_consumer
    steps = Array.new(3) { TaskerCore::Types::SimpleStepMessage.random }
    ids = @service.send_batch(@queue, steps)
    received = []
    deadline = monotonic + 10
    while received.size < 3 && monotonic < deadline
      received.concat(JSON.parse(cli("receive", @queue, "--max", "10", "--ack", "--json")))
    end
    assert_equal ids.sort, received.map { |m| m["message_id"] }.sort
    by_id = received.to_h { |m| [m["message_id"], m] }
    ids.zip(steps).each do |id, step|
      assert_equal step.to_json, by_id[id]["payload"], "the Rust side read other bytes"
      assert_equal step.correlation_id, by_id[id]["correlation_id"]
      assert_equal 1, by_id[id]["receive_count"]
    end
    assert_empty @service.receive_messages(@queue, wait: 0.3), "the CLI's acks did not delete"
  end

  def test_a_rust_producer_and_a_ruby_consumer
    correlation = SecureRandom.uuid
    id = cli("send", @queue, '{"from":"rust","n":7}', "--correlation-id", correlation).strip
    got = []
    handled = @service.consume(@queue, limit: 1, wait: 0.5, idle_timeout: 10) { |msg| got << msg }
    assert_equal 1, handled
    message = got.first
    assert_equal id, message.message_id
    assert_equal correlation, message.correlation_id
    assert_equal({ "from" => "rust", "n" => 7 }, message.payload)
    stats = @service.queue_stats(@queue)
    assert_equal 0, stats[:message_count]
  end
end

class PgmqInteropTest < Minitest::Test
  include InteropCases

  def config
    pgmq_config
  end

  def cli_env
    { "DATABASE_URL" => DATABASE_URL }
  end
end

class RabbitMqInteropTest < Minitest::Test
  include InteropCases

  def config
    rabbitmq_config
  end

  def cli_env
    { "AMQP_URL" => AMQP_URL }
  end
end
