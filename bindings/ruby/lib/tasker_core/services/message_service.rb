# frozen_string_literal: true

module TaskerCore
  module Services
    # The messaging service of the plan (create_queue, send_message, send_batch,
    # receive_messages, delete_message, change_message_visibility, queue_stats, purge_queue,
    # delete_queue, healthy?), over the Rust library's MessagingService for whichever provider
    # the configuration names. Build it with MessageServiceFactory.create.
    #
    # Queue names are Symbols or Strings (1 to 47 of a-z, 0-9, _, starting with a letter).
    # Messages are Hashes (or Arrays, numbers...) or Types::SimpleStepMessage objects, sent as
    # JSON; send_raw sends bytes as they are. Every blocking call releases the GVL: other Ruby
    # threads run while it waits. Errors are TaskerCore::Messaging::Error subclasses.
    #
    # Thread-safe: one service can be shared by every thread of a process. Safe after fork:
    # the first call in a child process reconnects (see docs/ruby.md).
    class MessageService
      # Result of delete_messages: how many took effect, and the refused receipts with why.
      DeleteResult = Struct.new(:deleted, :rejected, keyword_init: true) do
        def ok?
          rejected.empty?
        end
      end

      attr_reader :native

      # Use MessageServiceFactory.create.
      def initialize(native)
        @native = native
        @provider = native.provider.to_sym
      end

      # The provider in use (:in_memory, :pgmq, :rabbitmq, :redis, :sqs, :nats, :kafka).
      attr_reader :provider

      # What the provider supports: { delayed_send: true, lease_extension: true, ...,
      # max_payload_bytes: 262144, max_batch_size: 100, timer_resolution: 0.001 }.
      def capabilities
        @capabilities ||= @native.capabilities.freeze
      end

      # { state: :healthy, queue_depth:, in_flight: } or { state: :degraded, reason: } or
      # { state: :unhealthy, error: }.
      def health
        @native.health
      end

      def healthy?
        health[:state] == :healthy
      rescue Messaging::Error
        false
      end

      # Creates the queue and its dead-letter queue if missing (idempotent). max_receive_count:
      # receipts before a message is dead-lettered (default: the configuration's; 0: never).
      def create_queue(queue, max_receive_count: nil)
        @native.create_queue(name(queue), max_receive_count)
        nil
      end

      # Sends one message (a Hash, SimpleStepMessage, ...: JSON on the wire); returns its id.
      # delay: seconds before it can be received; message_id / correlation_id: UUID Strings
      # (default: a new id; a SimpleStepMessage's own correlation id).
      def send_message(queue, message, delay: 0, message_id: nil, correlation_id: nil)
        payload, correlation = encode(message)
        @native.send_batch(name(queue), [payload], message_id && [message_id],
                           [correlation_id || correlation], delay.to_f).first
      end

      # Sends many messages in as few round trips as the provider allows; returns their ids in
      # order. Every message is checked before anything is sent.
      def send_batch(queue, messages, delay: 0)
        payloads = Array.new(messages.size)
        correlations = nil
        messages.each_with_index do |message, i|
          payloads[i], correlation = encode(message)
          next unless correlation

          (correlations ||= Array.new(messages.size))[i] = correlation
        end
        @native.send_batch(name(queue), payloads, nil, correlations, delay.to_f)
      end

      # Sends bytes as they are (a String; no JSON). Returns the message id.
      def send_raw(queue, bytes, delay: 0, message_id: nil, correlation_id: nil)
        raise ArgumentError, "send_raw takes a String" unless bytes.is_a?(String)

        @native.send_batch(name(queue), [bytes], message_id && [message_id],
                           correlation_id && [correlation_id], delay.to_f).first
      end

      # Leases up to max_messages for visibility_timeout seconds and decodes their JSON.
      # wait: seconds to wait for a message when none is there (0: return at once). as: a class
      # to turn each payload into: its from_received(message) when it has one
      # (SimpleStepMessage, decoded natively), else its from_hash(decoded JSON). A message whose payload
      # does not decode is moved to the dead-letter queue ("undecodable: ...") and not
      # returned, as the Rust typed layer does.
      def receive_messages(queue, max_messages: 10, visibility_timeout: nil, wait: 0, as: nil)
        queue = name(queue)
        messages = @native.receive(queue, max_messages, lease(visibility_timeout), wait.to_f)
        decoded = []
        messages.each do |message|
          decode(message, as)
          decoded << message
        rescue Messaging::SerializationError => e
          @native.dead_letter(queue, message, "undecodable: #{e.message}")
        end
        decoded
      end

      # Like receive_messages without decoding: each message's body is its bytes.
      def receive_raw(queue, max_messages: 10, visibility_timeout: nil, wait: 0)
        @native.receive(name(queue), max_messages, lease(visibility_timeout), wait.to_f)
      end

      # Acknowledges: the message is gone for good. Takes a received message or its
      # receipt_handle. Raises InvalidReceipt when the lease was lost to another receiver.
      def delete_message(queue, receipt)
        @native.delete(name(queue), receipt)
        nil
      end

      # Deletes many (one round trip where the provider allows). Refused receipts do not
      # raise: they are in the result's rejected list as [receipt_handle, exception].
      def delete_messages(queue, receipts)
        deleted, rejected = @native.delete_batch(name(queue), Array(receipts))
        DeleteResult.new(deleted: deleted, rejected: rejected)
      end

      # Acknowledges one message or many; raises the first refusal (after deleting the rest).
      def ack(queue, messages)
        if messages.is_a?(Array)
          result = delete_messages(queue, messages)
          raise result.rejected.first[1] unless result.ok?

          result.deleted
        else
          delete_message(queue, messages)
          1
        end
      end

      # Moves the end of the lease to now + visibility_timeout seconds: 0 releases the message
      # at once, more retries it later or extends a lease still being worked on.
      def change_message_visibility(queue, receipt, visibility_timeout)
        @native.change_visibility(name(queue), receipt, visibility_timeout.to_f)
        nil
      end

      # Gives the message back: receivable again after delay seconds (0: at once).
      def release(queue, receipt, delay: 0)
        change_message_visibility(queue, receipt, delay)
      end

      # Moves a leased message to the queue's dead-letter queue now, with the reason.
      def dead_letter_message(queue, receipt, reason)
        @native.dead_letter(name(queue), receipt, reason.to_s)
        nil
      end

      # Moves up to max_messages dead letters back to the queue; returns how many.
      def redrive_dead_letters(queue, max_messages: 100)
        @native.redrive(name(queue), max_messages)
      end

      # The name of the queue's dead-letter queue (a String).
      def dead_letter_queue_name(queue)
        @native.dead_letter_queue_name(name(queue))
      end

      # { queue_name:, message_count:, in_flight_count:, delayed_count:,
      #   oldest_message_age_seconds:, dead_letter_count: } (nil where the provider cannot say).
      def queue_stats(queue)
        @native.stats(name(queue))
      end

      # Removes the queue's messages (not its dead letters); returns how many.
      def purge_queue(queue)
        @native.purge(name(queue))
      end

      # Removes the queue, its messages and its dead-letter queue.
      def delete_queue(queue)
        @native.delete_queue(name(queue))
        nil
      end

      # Waits until a message may be receivable, at most timeout seconds (takes no lease).
      def wait_for_messages(queue, timeout)
        @native.wait(name(queue), timeout.to_f)
        nil
      end

      # Handles messages with the block until it breaks, limit messages were handled, or no
      # message came for idle_timeout seconds; returns how many were handled.
      #
      #   service.consume(:fulfillment_queue) { |msg| handle(msg.payload) }
      #
      # When the block returns, the message is acknowledged. When it raises a StandardError,
      # the message is released for a backoff of backoff * 2**(receive_count - 1) seconds (at
      # most max_backoff), or dead-lettered with the error as its reason once it was received
      # max_attempts times (default: the configuration's queues.max_receive_count). An
      # undecodable payload is dead-lettered without calling the block. On break, throw or an
      # exception that is not a StandardError, the messages not handled yet are released at
      # once and the exception goes on.
      def consume(queue, batch_size: 10, visibility_timeout: nil, wait: 1.0, as: nil,
                  max_attempts: nil, backoff: 1.0, max_backoff: 60.0, limit: nil,
                  idle_timeout: nil, &handler)
        raise ArgumentError, "consume needs a block" unless handler
        return 0 if limit && limit <= 0

        queue = name(queue)
        vt = lease(visibility_timeout)
        max_attempts ||= @native.max_receive_count
        policy = { max_attempts: max_attempts, backoff: backoff.to_f, max_backoff: max_backoff.to_f }
        handled = 0
        idle_since = monotonic
        loop do
          want = limit ? [batch_size, limit - handled].min : batch_size
          window = idle_timeout ? [wait.to_f, [idle_timeout - (monotonic - idle_since), 0].max].min : wait.to_f
          batch = @native.receive(queue, want, vt, window)
          if batch.empty?
            return handled if idle_timeout && monotonic - idle_since >= idle_timeout

            next
          end
          idle_since = monotonic
          handled += handle_batch(queue, batch, as, policy, &handler)
          return handled if limit && handled >= limit
        end
      end

      # Closes the connections. Further calls raise NotInitialized.
      def shutdown
        @native.shutdown
        nil
      end

      def inspect
        "#<#{self.class.name} provider=#{@provider}>"
      end

      private

      def name(queue)
        case queue
        when String then queue
        when Symbol then queue.name
        else raise ArgumentError, "a queue name is a String or Symbol, not #{queue.class}"
        end
      end

      def lease(visibility_timeout)
        (visibility_timeout || (@default_vt ||= @native.default_visibility_timeout)).to_f
      end

      # [payload bytes, correlation id or nil]
      def encode(message)
        case message
        when Types::SimpleStepMessage then [message.to_json, message.correlation_id]
        when Hash, Array, Numeric, true, false, nil then [JSON.generate(message), nil]
        when String
          raise ArgumentError, "a String is not a message: send a Hash, or bytes with send_raw"
        else
          raise ArgumentError, "cannot send a #{message.class} (#{message.class} has no to_h)" \
            unless message.respond_to?(:to_h)

          [JSON.generate(message.to_h), nil]
        end
      rescue JSON::GeneratorError => e
        raise Messaging::SerializationError, "encoding of #{message.class} failed: #{e.message}"
      end

      # Sets the message's payload to its decoded JSON, or to an object of type: through
      # type.from_received (the message) when it has it, from_hash (the decoded Hash) otherwise.
      def decode(message, type)
        if type.respond_to?(:from_received)
          message.payload = type.from_received(message)
        else
          payload = message.payload
          message.payload = type.from_hash(payload) if type
        end
        message
      end

      # Runs the handler on each message of a batch; returns how many it handled.
      def handle_batch(queue, batch, type, policy)
        done = 0
        batch.each do |message|
          begin
            decode(message, type)
          rescue Messaging::SerializationError => e
            @native.dead_letter(queue, message, "undecodable: #{e.message}")
            done += 1
            next
          end
          outcome = nil
          begin
            yield message
            outcome = :ok
          rescue StandardError => e
            outcome = :failed
            handle_failure(queue, message, e, policy)
          end
          @native.delete(queue, message) if outcome == :ok
          done += 1
        end
        done
      ensure
        # A break, throw or non-StandardError left the batch early: give the rest back now.
        release_quietly(queue, batch[done..]) if batch && done < batch.size
      end

      def handle_failure(queue, message, error, policy)
        attempts = message.receive_count
        if policy[:max_attempts].positive? && attempts >= policy[:max_attempts]
          reason = "#{error.class}: #{error.message}"
          reason = "#{reason[0, 500]}..." if reason.length > 500
          begin
            @native.dead_letter(queue, message, reason)
            return
          rescue Messaging::Unsupported
            # No dead-letter queues on this provider: release it like any failure.
          end
        end
        delay = [policy[:backoff] * (2**(attempts - 1)), policy[:max_backoff]].min
        delay = 0.0 unless capabilities[:lease_extension]
        @native.change_visibility(queue, message, delay)
      end

      def release_quietly(queue, messages)
        messages.each do |message|
          @native.change_visibility(queue, message, 0.0)
        rescue Messaging::Error
          # Its lease ends by itself; nothing is lost.
          nil
        end
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
