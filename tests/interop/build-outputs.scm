;;; build-outputs.scm -- successful builds and what they register: a simple
;;; build and building it again, several outputs (and asking for one), a
;;; chain, the references found in outputs (to themselves, to each other,
;;; to inputs, across a 64 KiB boundary, in a symlink) and those that must
;;; not be found, allowed/disallowed references, and the
;;; `exportReferencesGraph' files.
;;;
;;; Queries about outputs that should exist are guarded, so that a build
;;; that failed shows as failed checks in a complete transcript rather than
;;; as an exception that loses it.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))
(record! "busybox" bb)

;;; A simple build, then again (nothing to do).

(define simple
  (sh-derivation s bb "simple"
                 "echo hello from the builder; echo 'hi' > $out; echo bye >&2"))
(expect-built! "simple" s (list simple))
(check-log! "simple: builder output in the log" "hello from the builder")
(record-outputs! "simple" s simple)
(record-files! "simple: files" (derivation->output-path simple))
(check! "simple: contents"
        (equal? (file-text (derivation->output-path simple)) "hi\n"))
(expect-built! "simple, again" s (list simple))
(check! "simple, again: nothing built"
        (zero? (count-lines %last-log "@ build-started")))

;;; Several outputs, referring to themselves and to each other.

(define multi
  (sh-derivation s bb "multi"
                 (string-append
                  "mkdir $out $dev; echo $out > $out/self;"
                  "echo $out > $dev/to-out; echo doc > $doc;"
                  "ln -s $doc $dev/link-to-doc")
                 #:outputs '("out" "dev" "doc")))
(expect-built! "several outputs, only dev asked for" s
               (list (cons (drv-file multi) "dev")))
(record-outputs! "several outputs" s multi)
(for-each (match-lambda
            ((name . path)
             (record-files! (string-append "several outputs: files of " name)
                            path)))
          (outputs-of multi))

;; Outputs that refer to each other make a cycle, which cannot be
;; registered.
(define cycle
  (sh-derivation s bb "cycle"
                 "mkdir $out $dev; echo $dev > $out/to-dev; echo $out > $dev/to-out"
                 #:outputs '("out" "dev")))
(expect-build-error! "outputs in a cycle" s (list cycle) "failed" 1)
(check-log! "outputs in a cycle: message" "cycle detected in the references")
(record-outputs! "outputs in a cycle" s cycle)

;;; A chain: c -> b -> a.

(define chain-a
  (sh-derivation s bb "chain-a" "mkdir $out; echo a > $out/v"))
(define chain-b
  (sh-derivation s bb "chain-b"
                 "mkdir $out; cat $a/v > $out/v; echo b >> $out/v; echo $a > $out/dep"
                 #:inputs (list (derivation-input chain-a))
                 #:env-vars `(("a" . ,(derivation->output-path chain-a)))))
(define chain-c
  (sh-derivation s bb "chain-c"
                 "mkdir $out; cat $b/v > $out/v; echo c >> $out/v; echo $b > $out/dep"
                 #:inputs (list (derivation-input chain-b))
                 #:env-vars `(("b" . ,(derivation->output-path chain-b)))))
(expect-built! "chain" s (list chain-c))
(check! "chain: built in order" (= 3 (count-lines %last-log "@ build-succeeded")))
(record-outputs! "chain a" s chain-a)
(record-outputs! "chain b" s chain-b)
(record-outputs! "chain c" s chain-c)
(check! "chain: contents"
        (equal? (file-text (output-file chain-c "v")) "a\nb\nc\n"))
(check! "chain: c refers to b only"
        (equal? (false-if-exception
                 (references s (derivation->output-path chain-c)))
                (list (derivation->output-path chain-b))))
(check! "chain: the closure of c"
        (equal? (sort (or (false-if-exception
                          (requisites s (list (derivation->output-path chain-c))))
                         '())
                      string<?)
                (sort (map derivation->output-path (list chain-a chain-b chain-c))
                      string<?)))

;;; References found and not invented.

(define unrelated (add-text-to-store s "unrelated" "not an input\n" '()))
(define fake (in-store (string-append (make-string 32 #\a) "-fake")))
(define refs
  (sh-derivation s bb "refs"
                 (string-append
                  "mkdir $out;"
                  ;; Its own path, an input's path, a path far inside a
                  ;; large file (after 100000 bytes), a symlink to an input.
                  "echo $out > $out/self;"
                  "head -c 100000 /dev/zero > $out/big; echo $a >> $out/big;"
                  "ln -s $c/v $out/link;"
                  ;; Store paths that are not inputs: never references.
                  "echo " unrelated " > $out/unrelated; echo " fake " > $out/fake;"
                  ;; The hash part alone is enough.
                  "basename $b | cut -c1-32 > $out/hash-of-b")
                 #:inputs (list (derivation-input chain-c)
                                (derivation-input chain-a))
                 #:env-vars `(("a" . ,(derivation->output-path chain-a))
                              ("b" . ,(derivation->output-path chain-b))
                              ("c" . ,(derivation->output-path chain-c)))))
(expect-built! "references" s (list refs))
(record-outputs! "references" s refs)
(let ((out (derivation->output-path refs)))
  (check! "references: found and not invented"
          (equal? (false-if-exception (references s out))
                  (sort (list out
                              (derivation->output-path chain-a)
                              (derivation->output-path chain-b)
                              (derivation->output-path chain-c))
                        string<?))
          (false-if-exception (references s out))))

;;; Allowed and disallowed references.

(define* (refers-to name target #:key allowed disallowed (self? #f))
  (sh-derivation s bb name
                 (string-append "mkdir $out; echo $t > $out/t"
                                (if self? "; echo $out > $out/self" ""))
                 #:inputs (list (derivation-input chain-a))
                 #:env-vars `(("t" . ,target))
                 #:allowed-references allowed
                 #:disallowed-references disallowed))

(define a-out (derivation->output-path chain-a))
(expect-built! "allowed references, ok" s
               (list (refers-to "allowed-ok" a-out #:allowed (list a-out))))
(expect-built! "allowed references, self allowed" s
               (list (refers-to "allowed-self" a-out #:self? #t
                                #:allowed (list a-out "out"))))
(define self-not-allowed
  (refers-to "allowed-self-not" a-out #:self? #t #:allowed (list a-out)))
(expect-build-error! "allowed references, self not allowed" s
                     (list self-not-allowed) "failed" 1)
(check-log! "allowed references, self not allowed: message"
            "is not allowed to refer to path")
(record-outputs! "allowed references, self not allowed" s self-not-allowed)
(define not-allowed (refers-to "allowed-not" a-out #:allowed '()))
(expect-build-error! "allowed references, violated" s
                     (list not-allowed) "failed" 1)
(check-log! "allowed references, violated: message"
            "is not allowed to refer to path")
(record-outputs! "allowed references, violated" s not-allowed)
(expect-built! "disallowed references, ok" s
               (list (refers-to "disallowed-ok" "nothing"
                                #:disallowed (list a-out))))
(define disallowed (refers-to "disallowed-not" a-out #:disallowed (list a-out)))
(expect-build-error! "disallowed references, violated" s
                     (list disallowed) "failed" 1)
(check-log! "disallowed references, violated: message"
            "is not allowed to refer to path")

;;; exportReferencesGraph.

(define graph
  (sh-derivation s bb "graph"
                 "mkdir $out; cp closure-of-c $out/c; cp closure-of-drv $out/drv"
                 #:inputs (list (derivation-input chain-c))
                 #:references-graphs
                 `(("closure-of-c" . ,(derivation->output-path chain-c))
                   ("closure-of-drv" . ,(drv-file chain-b)))))
(expect-built! "references graphs" s (list graph))
(record-outputs! "references graphs" s graph)
(let ((c-graph (file-text (output-file graph "c")))
      (drv-graph (file-text (output-file graph "drv"))))
  (record! "references graphs: closure of an output" c-graph)
  (record! "references graphs: closure of a .drv" drv-graph)
  (check! "references graphs: closure of an output, exact"
          (equal? c-graph
                  (false-if-exception
                   (expected-graph s (list (derivation->output-path chain-c)))))
          c-graph))

(step-alive! "alive at the end" s #t)
(finish!)
