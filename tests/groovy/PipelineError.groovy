/** What `error` throws: the build stops with this message. */
class PipelineError extends RuntimeException {
    PipelineError(String message) { super(message) }
}
