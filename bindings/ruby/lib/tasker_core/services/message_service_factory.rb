# frozen_string_literal: true

module TaskerCore
  module Services
    # Builds the MessageService the configuration names, connected and ready.
    #
    #   MessageServiceFactory.create(provider: :in_memory)
    #   MessageServiceFactory.create(provider: :pgmq,
    #                                connection: { pgmq: { database_url: ENV["DATABASE_URL"] } })
    #   MessageServiceFactory.create(config_file: "tasker-mq.toml")   # as the CLI's --config
    #
    # Sources, later ones winning: the library's defaults, config_file (TOML, as for the CLI),
    # the environment (TASKER_MQ_*, DATABASE_URL, AMQP_URL, ... as for the CLI; env: false
    # ignores it), the Hash (keys as in the TOML file: provider, connection, queues,
    # retry_policy, ...), then provider:. Unknown keys and bad values raise ConfigurationError
    # naming the key; no error shows a password.
    class MessageServiceFactory
      OPTIONS = %i[config_file env].freeze

      def self.create(config = nil, **options)
        settings = stringify(config || {}).merge(stringify(options))
        config_file = settings.delete("config_file")
        env = settings.key?("env") ? settings.delete("env") : true
        provider = settings.delete("provider")
        json = settings.empty? ? nil : JSON.generate(settings)
        native = Native::Service.open(json, config_file&.to_s, env ? true : false,
                                      provider&.to_s)
        MessageService.new(native)
      end

      def self.stringify(hash)
        raise ArgumentError, "the configuration is a Hash, not a #{hash.class}" unless hash.is_a?(Hash)

        hash.each_with_object({}) do |(key, value), out|
          out[key.to_s] = value.is_a?(Hash) ? stringify(value) : value
        end
      end
      private_class_method :stringify
    end
  end
end
