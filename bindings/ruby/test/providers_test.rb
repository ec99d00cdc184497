# frozen_string_literal: true

require_relative "service_contract"

# The same API on PGMQ (PostgreSQL) and RabbitMQ, through the factory.
class PgmqServiceTest < Minitest::Test
  include ServiceContract

  def build_service
    service_or_skip(pgmq_config)
  end

  def prefix
    "pg"
  end

  def test_a_forked_child_reconnects_and_its_messages_reach_the_parent
    child_id = nil
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      begin
        writer.write(@service.send_message(@queue, { "from" => "child" }))
        writer.close
        exit!(0)
      rescue Exception => e # rubocop:disable Lint/RescueException
        writer.write("error: #{e.class}: #{e.message}")
        writer.close
        exit!(1)
      end
    end
    writer.close
    child_id = reader.read
    _, status = Process.wait2(pid)
    assert status.success?, child_id
    message = receive_all(@queue, 1).first
    assert_equal child_id, message.message_id
    assert_equal({ "from" => "child" }, message.payload)
    @service.ack(@queue, message)
  end
end

class RabbitMqServiceTest < Minitest::Test
  include ServiceContract

  def build_service
    service_or_skip(rabbitmq_config)
  end

  def prefix
    "amqp"
  end
end
