# frozen_string_literal: true

module TaskerCore
  module Messaging
    # A received (leased) message. Defined by the native extension, which gives its readers:
    # body (the payload bytes: a UTF-8 String, or binary when not UTF-8), bytesize, message_id,
    # correlation_id (nil when absent), receive_count (1 on the first delivery),
    # receipt_handle (a String naming this lease), queue_name, enqueued_at,
    # visibility_timeout_expires (a Time, or nil when the provider does not know), dead_letter
    # (where a dead letter came from and why, or nil). Pass the message itself (or its
    # receipt_handle) to ack, release, change_message_visibility and dead_letter_message.
    class ReceivedMessage
      # The payload decoded from JSON (a Hash with String keys, usually), or what
      # receive_messages(as:) turned it into. Raises SerializationError when it is not JSON.
      def payload
        return @payload if defined?(@payload)

        @payload = decode_json
      end

      # Replaces the decoded payload (receive_messages(as:) uses it).
      def payload=(value)
        @payload = value
      end

      alias receipt receipt_handle

      def to_h
        { message_id: message_id, correlation_id: correlation_id, receive_count: receive_count,
          receipt_handle: receipt_handle, queue_name: queue_name, enqueued_at: enqueued_at,
          payload: payload }
      end

      private

      def decode_json
        JSON.parse(body)
      rescue JSON::ParserError, EncodingError => e
        detail = e.message.to_s
        detail = "#{detail[0, 120]}..." if detail.length > 120
        raise SerializationError, "decoding of JSON failed: #{detail}"
      end
    end
  end
end
