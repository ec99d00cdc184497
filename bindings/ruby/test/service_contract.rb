# frozen_string_literal: true

require_relative "test_helper"

# The API of MessageService, run against each provider (in-memory, PGMQ, RabbitMQ). The
# including class defines `build_service` and `prefix`.
module ServiceContract
  include TestSupport

  def setup
    @service = build_service
    @queue = unique_queue(prefix)
    @service.create_queue(@queue, max_receive_count: 3)
    @created = [@queue]
  end

  def teardown
    return unless @service

    @created.each do |q|
      @service.delete_queue(q)
    rescue TaskerCore::Messaging::Error
      nil
    end
  end

  def receive_all(queue, expected, **opts)
    got = []
    deadline = monotonic + 10
    while got.size < expected && monotonic < deadline
      got.concat(@service.receive_messages(queue, max_messages: expected - got.size, wait: 0.5, **opts))
    end
    got
  end

  def test_a_hash_round_trips_with_its_metadata
    id = @service.send_message(@queue, { "order" => 42, "items" => ["a", nil, 1.5] })
    assert_match(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/, id)
    message = receive_all(@queue, 1).first
    refute_nil message, "the message was not received"
    assert_equal({ "order" => 42, "items" => ["a", nil, 1.5] }, message.payload)
    assert_equal id, message.message_id
    assert_nil message.correlation_id
    assert_equal 1, message.receive_count
    assert_equal @queue, message.queue_name
    assert_kind_of Time, message.enqueued_at
    assert_in_delta Time.now, message.enqueued_at, 60
    assert_kind_of String, message.receipt_handle
    @service.delete_message(@queue, message)
    assert_equal 0, @service.queue_stats(@queue)[:message_count]
    assert_empty @service.receive_messages(@queue)
  end

  def test_a_simple_step_message_is_the_rust_typed_layers_bytes
    step = TaskerCore::Types::SimpleStepMessage.random
    id = @service.send_message(@queue.to_sym, step)
    message = receive_all(@queue, 1, as: TaskerCore::Types::SimpleStepMessage).first
    assert_equal step, message.payload
    assert_equal id, message.message_id
    assert_equal step.correlation_id, message.correlation_id
    expected = %({"task_uuid":"#{step.task_uuid}","step_uuid":"#{step.step_uuid}",) +
               %("correlation_id":"#{step.correlation_id}"})
    assert_equal expected, message.body
    assert_equal 1, @service.ack(@queue, message)
  end

  def test_send_batch_returns_ids_in_order_and_ack_takes_them_all
    messages = Array.new(25) { |i| { "n" => i } }
    ids = @service.send_batch(@queue, messages)
    assert_equal 25, ids.size
    assert_equal 25, ids.uniq.size
    got = receive_all(@queue, 25, max_messages: 25)
    assert_equal (0...25).to_a, got.map { |m| m.payload["n"] }.sort
    assert_equal ids.sort, got.map(&:message_id).sort
    result = @service.delete_messages(@queue, got)
    assert result.ok?, "refused: #{result.rejected.inspect}"
    assert_equal 25, result.deleted
    assert_equal [], @service.send_batch(@queue, [])
  end

  def test_release_makes_it_receivable_again_counted
    @service.send_message(@queue, { "x" => 1 })
    first = receive_all(@queue, 1).first
    @service.release(@queue, first)
    second = receive_all(@queue, 1).first
    refute_nil second, "a released message was not received again"
    assert_equal first.message_id, second.message_id
    assert_equal 2, second.receive_count
    @service.ack(@queue, second)
  end

  def test_a_lease_hides_the_message_until_it_ends
    @service.send_message(@queue, { "x" => 1 })
    leased = receive_all(@queue, 1, visibility_timeout: 1).first
    assert_empty @service.receive_messages(@queue, visibility_timeout: 1)
    again = receive_all(@queue, 1)
    assert_equal leased.message_id, again.first&.message_id
    assert_equal 2, again.first.receive_count
    @service.ack(@queue, again.first)
  end

  def test_dead_letter_and_redrive
    id = @service.send_message(@queue, { "bad" => true })
    message = receive_all(@queue, 1).first
    @service.dead_letter_message(@queue, message, "cannot handle it")
    dlq = @service.dead_letter_queue_name(@queue)
    assert_equal "#{@queue}_dlq", dlq
    dead = receive_all(dlq, 1).first
    refute_nil dead, "nothing in the dead-letter queue"
    assert_equal id, dead.message_id
    info = dead.dead_letter
    assert_equal @queue, info[:source_queue]
    assert_match(/cannot handle it/, info[:reason])
    @service.release(dlq, dead)
    assert_equal 1, @service.redrive_dead_letters(@queue)
    back = receive_all(@queue, 1).first
    assert_equal id, back.message_id
    assert_equal 1, back.receive_count
    @service.ack(@queue, back)
  end

  def test_an_undecodable_payload_is_dead_lettered_not_returned
    @service.send_raw(@queue, "not json {")
    @service.send_message(@queue, { "ok" => true })
    got = receive_all(@queue, 1, max_messages: 10)
    assert_equal [{ "ok" => true }], got.map(&:payload)
    dlq = @service.dead_letter_queue_name(@queue)
    dead = nil
    deadline = monotonic + 10
    dead = @service.receive_raw(dlq, wait: 0.5).first while dead.nil? && monotonic < deadline
    refute_nil dead, "the undecodable message is not in the dead-letter queue"
    assert_equal "not json {", dead.body
    assert_match(/undecodable/, dead.dead_letter[:reason])
  end

  def test_stats_purge_and_delete_queue
    @service.send_batch(@queue, [{ "a" => 1 }, { "a" => 2 }])
    stats = @service.queue_stats(@queue)
    assert_equal @queue, stats[:queue_name]
    deadline = monotonic + 5
    stats = @service.queue_stats(@queue) while stats[:message_count] < 2 && monotonic < deadline
    assert_equal 2, stats[:message_count]
    assert_equal 2, @service.purge_queue(@queue)
    @service.delete_queue(@queue)
    assert_raises(TaskerCore::Messaging::QueueNotFound) { @service.queue_stats(@queue) }
  end

  def test_errors_are_mapped_to_the_hierarchy
    missing = unique_queue("missing")
    error = assert_raises(TaskerCore::Messaging::QueueNotFound) do
      @service.send_message(missing, { "a" => 1 })
    end
    assert_kind_of TaskerCore::Messaging::PermanentError, error
    assert_kind_of TaskerCore::Messaging::Error, error
    refute error.retryable?
    assert_equal missing, error.queue
    assert_raises(TaskerCore::Messaging::QueueNotFound) { @service.receive_messages(missing) }

    error = assert_raises(TaskerCore::Messaging::InvalidQueueName) { @service.create_queue("Bad-Name") }
    assert_equal "Bad-Name", error.queue

    limit = @service.capabilities[:max_payload_bytes]
    big = { "x" => "y" * limit }
    error = assert_raises(TaskerCore::Messaging::PayloadTooLarge) { @service.send_batch(@queue, [{ "ok" => 1 }, big]) }
    assert_operator error.size, :>, error.max
    assert_equal 0, @service.queue_stats(@queue)[:message_count], "a refused batch sent something"

    @service.send_message(@queue, { "a" => 1 })
    message = receive_all(@queue, 1).first
    assert_raises(TaskerCore::Messaging::InvalidReceipt) { @service.delete_message(@queue, "garbage") }
    other = unique_queue("other")
    @service.create_queue(other)
    @created << other
    assert_raises(TaskerCore::Messaging::InvalidReceipt) { @service.delete_message(other, message) }
    assert_raises(ArgumentError) { @service.send_message(@queue, "a bare string") }
    @service.ack(@queue, message)
  end

  def test_consume_acks_on_return
    @service.send_batch(@queue, Array.new(5) { |i| { "n" => i } })
    seen = []
    handled = @service.consume(@queue, limit: 5, wait: 0.5) { |msg| seen << msg.payload["n"] }
    assert_equal 5, handled
    assert_equal (0...5).to_a, seen.sort
    assert_empty @service.receive_messages(@queue, wait: 0.3)
  end

  def test_consume_releases_with_backoff_on_raise_then_dead_letters_after_the_limit
    id = @service.send_message(@queue, { "n" => 1 })
    attempts = []
    handled = @service.consume(@queue, max_attempts: 2, backoff: 0.3, limit: 2, wait: 0.5) do |msg|
      attempts << [msg.receive_count, monotonic]
      raise "boom #{msg.receive_count}"
    end
    assert_equal 2, handled
    assert_equal [1, 2], attempts.map(&:first)
    assert_operator attempts[1][1] - attempts[0][1], :>=, 0.25, "released without its backoff"
    dead = receive_all(@service.dead_letter_queue_name(@queue), 1).first
    refute_nil dead, "not dead-lettered after max_attempts"
    assert_equal id, dead.message_id
    assert_match(/RuntimeError: boom 2/, dead.dead_letter[:reason])
  end

  def test_break_in_consume_releases_the_rest
    @service.send_batch(@queue, Array.new(3) { |i| { "n" => i } })
    sleep 0.2 # all three visible to one receive
    @service.consume(@queue, batch_size: 3, wait: 0.5) { |_msg| break }
    got = receive_all(@queue, 3, max_messages: 3)
    assert_equal 3, got.size, "messages were kept leased after break"
    @service.ack(@queue, got)
  end
end
