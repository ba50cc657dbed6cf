/**
 * Runs a declarative Jenkinsfile on a Pipeline stub, as Jenkins would run one
 * build of `branch` with `params`: each stage's `when` (`branch`,
 * `expression`, `allOf`, `anyOf`, `not`) decides whether it and its nested
 * stages run; `steps` run their calls in order, the library's steps through
 * the stub (and so the stand-in binary); the Jenkinsfile's own `sh` and `dir`
 * are recorded, not run; `input` answers with `approver`. Agents, options and
 * parameters' declarations are read past. Enough of declarative pipelines to
 * walk every path an example shows, not a Jenkins.
 */
class Declarative {
    final Pipeline pipeline
    final String branch
    final String approver
    /** The stages whose steps ran, by name, in order. */
    List ran = []
    /** The commands the Jenkinsfile's own `sh` steps would have run. */
    List commands = []
    /** Each `input` step's arguments. */
    List inputs = []

    Declarative(Pipeline pipeline, String branch, String approver) {
        this.pipeline = pipeline
        this.branch = branch
        this.approver = approver
    }

    /** Runs `text` with `params`; the stages that ran. */
    List run(String text, Map params) {
        def binding = pipeline.binding
        binding.setVariable('params', params)
        binding.setVariable('_', null)
        binding.setVariable('pipeline', { Closure body -> top(body) })
        pipeline.run(text)
        return ran
    }

    private void top(Closure body) {
        def sections = calls(body)
        def stages = sections.find { it.name == 'stages' }
        if (stages) { runStages(stages.args[0]) }
        def post = sections.find { it.name == 'post' }
        if (post) {
            def always = calls(post.args[0]).find { it.name == 'always' }
            if (always) { steps(always.args[0]) }
        }
    }

    private void runStages(Closure body) {
        for (def call : calls(body).findAll { it.name == 'stage' }) {
            def name = call.args[0]
            def parts = calls(call.args[1])
            def when = parts.find { it.name == 'when' }
            if (when && !holds(calls(when.args[0]))) {
                continue
            }
            def nested = parts.find { it.name == 'stages' }
            if (nested) {
                runStages(nested.args[0])
            }
            def work = parts.find { it.name == 'steps' }
            if (work) {
                ran << name
                steps(work.args[0])
            }
        }
    }

    /** Whether every condition of a `when` (but `beforeAgent`) holds. */
    private boolean holds(List conditions) {
        conditions.findAll { it.name != 'beforeAgent' }.every { condition(it) }
    }

    private boolean condition(Map call) {
        switch (call.name) {
            case 'branch': return branch == call.args[0]
            case 'expression': return call.args[0].call() as boolean
            case 'allOf': return holds(calls(call.args[0]))
            case 'anyOf': return calls(call.args[0]).any { condition(it) }
            case 'not': return !holds(calls(call.args[0]))
            default: throw new IllegalArgumentException("a `when` condition this walk does not know: ${call.name}")
        }
    }

    /** The calls a structural block makes, in order, without running anything they name. */
    private List calls(Closure block) {
        def recorder = new DeclarativeRecorder(pipeline.binding)
        def copy = block.rehydrate(recorder, block.owner, block.thisObject)
        copy.resolveStrategy = Closure.DELEGATE_FIRST
        copy.call()
        return recorder.calls
    }

    private void steps(Closure block) {
        def delegate = new DeclarativeSteps(this, block.thisObject)
        def copy = block.rehydrate(delegate, block.owner, block.thisObject)
        copy.resolveStrategy = Closure.DELEGATE_FIRST
        copy.call()
    }
}

/** Records every call of a structural block; names resolve to the pipeline's variables. */
class DeclarativeRecorder {
    final Binding binding
    List calls = []
    DeclarativeRecorder(Binding binding) { this.binding = binding }
    def methodMissing(String name, def args) {
        calls << [name: name, args: args as List]
        return null
    }
    def propertyMissing(String name) {
        if (name == 'none') { return 'none' }
        if (binding.hasVariable(name)) { return binding.getVariable(name) }
        throw new MissingPropertyException(name, DeclarativeRecorder)
    }
}

/**
 * What a `steps` block sees: the Jenkinsfile's own `sh`, `dir`, `script`
 * and `input`; everything else is the pipeline's (a library step, `echo`,
 * a variable) or the Jenkinsfile's own function.
 */
class DeclarativeSteps {
    final Declarative walk
    final Object script
    DeclarativeSteps(Declarative walk, Object script) {
        this.walk = walk
        this.script = script
    }
    def sh(String command) { walk.commands << command; null }
    def dir(String path, Closure body) { inner(body) }
    def script(Closure body) { inner(body) }
    def input(Map args) { walk.inputs << args; walk.approver }
    private def inner(Closure body) {
        def copy = body.rehydrate(this, body.owner, body.thisObject)
        copy.resolveStrategy = Closure.DELEGATE_FIRST
        copy.call()
    }
    def methodMissing(String name, def args) {
        def binding = walk.pipeline.binding
        if (binding.hasVariable(name) && binding.getVariable(name) instanceof Closure) {
            return binding.getVariable(name).call(*(args as List))
        }
        return script.invokeMethod(name, args)
    }
    def propertyMissing(String name) {
        return walk.pipeline.binding.getVariable(name)
    }
    def propertyMissing(String name, def value) {
        walk.pipeline.binding.setVariable(name, value)
    }
}
