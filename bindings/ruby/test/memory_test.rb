# frozen_string_literal: true

require_relative "service_contract"
require "timeout"

class InMemoryServiceTest < Minitest::Test
  include ServiceContract

  def build_service
    memory_service
  end

  def prefix
    "mem"
  end
end

class InMemoryOnlyTest < Minitest::Test
  include TestSupport

  def test_the_factory_gives_a_working_in_memory_service
    service = TaskerCore::Services::MessageServiceFactory.create(provider: :in_memory)
    assert_equal :in_memory, service.provider
    assert service.healthy?
    assert_equal :healthy, service.health[:state]
    assert service.capabilities[:delayed_send]
    assert_match(/provider=in_memory/, service.inspect)
  end

  def test_a_receive_that_waits_releases_the_gvl
    service = memory_service
    queue = unique_queue("gvl")
    service.create_queue(queue)
    ticks = 0
    ticker = Thread.new do
      loop do
        ticks += 1
        sleep 0.01
      end
    end
    started = monotonic
    got = service.receive_messages(queue, wait: 1.0)
    elapsed = monotonic - started
    ticker.kill
    assert_empty got
    assert_operator elapsed, :>=, 0.95
    assert_operator ticks, :>=, 30, "the other thread ticked #{ticks} times during a 1 s wait"
  end

  def test_a_waiting_receive_wakes_when_another_thread_sends
    service = memory_service
    queue = unique_queue("wake")
    service.create_queue(queue)
    sender = Thread.new do
      sleep 0.2
      service.send_message(queue, { "hi" => 1 })
    end
    started = monotonic
    got = service.receive_messages(queue, wait: 5.0)
    sender.join
    assert_equal [{ "hi" => 1 }], got.map(&:payload)
    assert_operator monotonic - started, :<, 2.0
  end

  def test_an_interrupt_ends_a_blocking_wait
    service = memory_service
    queue = unique_queue("intr")
    service.create_queue(queue)
    started = monotonic
    assert_raises(Timeout::Error) { Timeout.timeout(0.3) { service.receive_messages(queue, wait: 10) } }
    assert_operator monotonic - started, :<, 2.0
    # The service still works afterwards.
    service.send_message(queue, { "after" => true })
    assert_equal [{ "after" => true }], service.receive_messages(queue).map(&:payload)
  end

  # Calls whose future is ready at the first poll keep the GVL (runtime.rs); a call that is
  # pending once (sleep(0) yields) takes the GVL-releasing path. Both, from several threads at
  # once, lose and duplicate nothing.
  def test_ready_and_once_pending_calls_from_many_threads
    service = memory_service
    queue = unique_queue("fast")
    service.create_queue(queue)
    threads = Array.new(4) do |t|
      Thread.new do
        50.times do |i|
          service.send_message(queue, { "t" => t, "i" => i })
          TaskerCore::Native::Service.sleep(0.0)
        end
      end
    end
    threads.each(&:join)
    seen = []
    while (got = service.receive_messages(queue, max_messages: 7)).any?
      seen.concat(got.map(&:payload))
      service.ack(queue, got)
    end
    assert_equal 200, seen.size
    assert_equal 200, seen.uniq.size
    assert_equal 0, service.queue_stats(queue)[:message_count]
  end

  def test_a_forked_child_gets_its_own_runtime_and_service
    service = memory_service
    queue = unique_queue("fork")
    service.create_queue(queue)
    service.send_message(queue, { "parent" => 1 })
    parent_pid = TaskerCore::Native.runtime_pid
    assert_equal Process.pid, parent_pid
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      begin
        # In-memory queues lived in the parent's memory: the child starts empty.
        service.create_queue(queue)
        service.send_message(queue, { "child" => 1 })
        got = service.receive_messages(queue, max_messages: 10).map(&:payload)
        writer.write(JSON.generate({ "got" => got, "runtime_pid" => TaskerCore::Native.runtime_pid,
                                     "built_pid" => service.native.built_pid }))
        writer.close
        exit!(0)
      rescue Exception => e # rubocop:disable Lint/RescueException
        writer.write(JSON.generate({ "error" => "#{e.class}: #{e.message}" }))
        writer.close
        exit!(1)
      end
    end
    writer.close
    report = JSON.parse(reader.read)
    _, status = Process.wait2(pid)
    assert status.success?, "child failed: #{report['error']}"
    assert_equal [{ "child" => 1 }], report["got"]
    assert_equal pid, report["runtime_pid"]
    assert_equal pid, report["built_pid"]
    # The parent's service and queue are untouched.
    assert_equal [{ "parent" => 1 }], service.receive_messages(queue).map(&:payload)
    assert_equal Process.pid, TaskerCore::Native.runtime_pid
  end

  def test_configuration_errors_name_the_key
    error = assert_raises(TaskerCore::Messaging::ConfigurationError) do
      memory_service(queues: { max_recieve_count: 3 })
    end
    assert_equal "queues.max_recieve_count", error.key
    error = assert_raises(TaskerCore::Messaging::ConfigurationError) do
      TaskerCore::Services::MessageServiceFactory.create(provider: :carrier_pigeon)
    end
    assert_equal "provider", error.key
  end

  def test_configuration_from_a_hash_a_toml_file_and_the_environment
    service = memory_service(queues: { max_receive_count: 7, default_visibility_timeout_secs: 12 })
    assert_equal 7, service.native.max_receive_count
    assert_in_delta 12.0, service.native.default_visibility_timeout

    require "tempfile"
    Tempfile.create(["tasker-mq", ".toml"]) do |file|
      file.write(%(provider = "in_memory"\n[queues]\nmax_receive_count = 4\n))
      file.flush
      from_file = TaskerCore::Services::MessageServiceFactory.create(config_file: file.path, env: false)
      assert_equal 4, from_file.native.max_receive_count
      ENV["TASKER_MQ_QUEUES__MAX_RECEIVE_COUNT"] = "9"
      begin
        from_env = TaskerCore::Services::MessageServiceFactory.create(config_file: file.path)
        assert_equal 9, from_env.native.max_receive_count
        ignoring_env = TaskerCore::Services::MessageServiceFactory.create(config_file: file.path, env: false)
        assert_equal 4, ignoring_env.native.max_receive_count
      ensure
        ENV.delete("TASKER_MQ_QUEUES__MAX_RECEIVE_COUNT")
      end
    end
  end

  def test_a_connection_error_never_shows_the_password
    error = assert_raises(TaskerCore::Messaging::Error) do
      TaskerCore::Services::MessageServiceFactory.create(
        provider: :pgmq, env: false,
        connection: { pgmq: { database_url: "postgres://tasker:Sup3rSecret@127.0.0.1:1/test" } },
        retry_policy: { max_retries: 0 }
      )
    end
    assert error.retryable?, "#{error.class}: #{error.message}"
    refute_includes error.message, "Sup3rSecret"
    refute_includes error.inspect, "Sup3rSecret"
    refute_includes error.full_message, "Sup3rSecret"
  end

  def test_a_delayed_message_waits_its_delay
    service = memory_service
    queue = unique_queue("delay")
    service.create_queue(queue)
    service.send_message(queue, { "later" => 1 }, delay: 0.5)
    assert_empty service.receive_messages(queue)
    assert_equal 1, service.queue_stats(queue)[:delayed_count]
    got = service.receive_messages(queue, wait: 2.0)
    assert_equal [{ "later" => 1 }], got.map(&:payload)
  end

  def test_binary_payloads_round_trip_through_send_raw
    service = memory_service
    queue = unique_queue("raw")
    service.create_queue(queue)
    bytes = (0..255).map(&:chr).join.b
    correlation = SecureRandom.uuid
    service.send_raw(queue, bytes, correlation_id: correlation)
    message = service.receive_raw(queue).first
    assert_equal bytes, message.body
    assert_equal Encoding::ASCII_8BIT, message.body.encoding
    assert_equal correlation, message.correlation_id
    assert_raises(TaskerCore::Messaging::SerializationError) { message.payload }
  end

  # receive_messages(as: SimpleStepMessage) decodes in Rust; it must accept, normalize and
  # refuse exactly what SimpleStepMessage.from_hash does, with the same error text.
  def test_the_native_step_decoder_agrees_with_from_hash
    service = memory_service
    queue = unique_queue("steps")
    service.create_queue(queue)
    id = SecureRandom.uuid
    upper = id.upcase
    payloads = [
      %({"task_uuid":"#{upper}","step_uuid":"#{id}","correlation_id":"#{id}","extra":[1]}),
      %({"task_uuid":"bad","task_uuid":"#{id}","step_uuid":"#{id}","correlation_id":"#{id}"}),
      %({"step_uuid":"#{id}","task_uuid":"#{id}","correlation_id":"\\u0061#{id[1..]}"}),
      "not json {",
      "[1]",
      %({"task_uuid":"#{id}","step_uuid":7,"correlation_id":"#{id}"}),
      %({"task_uuid":"#{id}","step_uuid":"#{id}"}),
      %({"task_uuid":"#{id.delete("-")}","step_uuid":"#{id}","correlation_id":"#{id}"}),
      %({"task_uuid":"#{id}","step_uuid":"#{id}","correlation_id":"#{id}x"})
    ]
    payloads.each { |p| service.send_raw(queue, p) }
    received = service.receive_raw(queue, max_messages: payloads.size)
    assert_equal payloads.size, received.size
    accepted = 0
    received.each do |message|
      expected = begin
        TaskerCore::Types::SimpleStepMessage.from_hash(JSON.parse(message.body))
      rescue JSON::ParserError
        :not_json
      rescue TaskerCore::Messaging::SerializationError => e
        e.message
      end
      native = begin
        message.decode_step_message(TaskerCore::Types::SimpleStepMessage)
      rescue TaskerCore::Messaging::SerializationError => e
        e.message
      end
      case expected
      when :not_json then assert_match(/\Adecoding of JSON failed: /, native, message.body)
      when String then assert_equal expected, native, message.body
      else
        accepted += 1
        assert_equal expected, native, message.body
        assert native.frozen?
        assert native.task_uuid.frozen?
        assert_equal id, native.task_uuid
        assert_equal expected.to_json, native.to_json
      end
    end
    assert_equal 3, accepted
    service.delete_messages(queue, received)
  end

  def test_undecodable_steps_are_dead_lettered_with_the_reason
    service = memory_service
    queue = unique_queue("badstep")
    service.create_queue(queue)
    good = TaskerCore::Types::SimpleStepMessage.random
    service.send_raw(queue, %({"task_uuid":"x","step_uuid":"x","correlation_id":"x"}))
    service.send_message(queue, good)
    got = service.receive_messages(queue, max_messages: 10, as: TaskerCore::Types::SimpleStepMessage)
    assert_equal [good], got.map(&:payload)
    dead = service.receive_raw(service.dead_letter_queue_name(queue), wait: 2).first
    refute_nil dead, "the undecodable step is not in the dead-letter queue"
    assert_match(/undecodable: decoding of SimpleStepMessage failed: task_uuid is not a UUID/,
                 dead.dead_letter[:reason])
  end

  def test_a_shut_down_service_refuses_calls
    service = memory_service
    service.shutdown
    assert_raises(TaskerCore::Messaging::NotInitialized) { service.create_queue(unique_queue("down")) }
  end
end
