# frozen_string_literal: true

require "securerandom"

module TaskerCore
  module Types
    # The orchestrator's canonical message: three UUIDs (PostgreSQL holds the state). On the
    # wire it is the JSON the Rust typed layer writes for StepMessage, byte for byte
    # ({"task_uuid":...,"step_uuid":...,"correlation_id":...}), and its correlation_id travels
    # as the message's correlation id too.
    class SimpleStepMessage
      FIELDS = %i[task_uuid step_uuid correlation_id].freeze
      UUID = /\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/
      # Canonical (lower-case) UUID text: one match on the usual path, no case fix needed.
      LOWER_UUID = /\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/

      attr_reader(*FIELDS)

      def initialize(task_uuid:, step_uuid:, correlation_id:)
        @task_uuid = check(:task_uuid, task_uuid)
        @step_uuid = check(:step_uuid, step_uuid)
        @correlation_id = check(:correlation_id, correlation_id)
        freeze
      end

      # Random ids, for tests and benchmarks.
      def self.random
        new(task_uuid: SecureRandom.uuid, step_uuid: SecureRandom.uuid,
            correlation_id: SecureRandom.uuid)
      end

      # From a decoded payload (String or Symbol keys). Raises SerializationError when a field
      # is missing or not a UUID.
      def self.from_hash(hash)
        raise Messaging::SerializationError, "decoding of SimpleStepMessage failed: not an object" \
          unless hash.is_a?(Hash)

        new(task_uuid: field(hash, "task_uuid", :task_uuid),
            step_uuid: field(hash, "step_uuid", :step_uuid),
            correlation_id: field(hash, "correlation_id", :correlation_id))
      rescue ArgumentError => e
        raise Messaging::SerializationError, "decoding of SimpleStepMessage failed: #{e.message}"
      end

      # From a received message: its payload decoded natively (the checks and errors of
      # from_hash, without building a Hash). A subclass decodes through from_hash.
      def self.from_received(message)
        return from_hash(message.payload) unless equal?(SimpleStepMessage)

        message.decode_step_message(self)
      end

      def to_h
        { task_uuid: task_uuid, step_uuid: step_uuid, correlation_id: correlation_id }
      end

      # The JSON the Rust typed layer writes for StepMessage, byte for byte (UUIDs need no
      # escaping; built when asked, so a received message does not pay for it).
      def to_json(*_args)
        %({"task_uuid":"#{@task_uuid}","step_uuid":"#{@step_uuid}",) +
          %("correlation_id":"#{@correlation_id}"})
      end

      def self.field(hash, name, key)
        hash.fetch(name) { hash.fetch(key, nil) }
      end
      private_class_method :field

      def ==(other)
        other.is_a?(SimpleStepMessage) && to_h == other.to_h
      end
      alias eql? ==

      def hash
        to_h.hash
      end

      private

      def check(field, value)
        raise ArgumentError, "#{field} is not a UUID" unless value.is_a?(String)

        unless LOWER_UUID.match?(value)
          raise ArgumentError, "#{field} is not a UUID" unless UUID.match?(value)

          value = value.downcase
        end
        -value
      end
    end
  end
end
