;;; build-failures.scm -- builds that fail, and how: a builder that exits
;;; with an error or is killed by a signal, one that makes no output or
;;; only some of its outputs, a dependency that fails (with and without
;;; keep-going), a builder outside the store, an unknown built-in builder,
;;; a bad `exportReferencesGraph', another system, outputs with unsafe
;;; permissions; a failed build leaves nothing valid, and failures are not
;;; cached (building again runs the builder again).

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

(define (failing name code)
  (sh-derivation s bb name
                 (string-append "echo about to fail; exit " (number->string code))))

;;; Exit codes and signals.

(define fail3 (failing "fail3" 3))
(expect-build-error! "exit code 3" s (list fail3) "failed" 100)
(check-log! "exit code 3: message"
            (string-append "builder for `" (drv-file fail3)
                           "' failed with exit code 3"))
(check-log! "exit code 3: trace"
            (string-append "@ build-failed " (drv-file fail3) " - 1 "))
(record-outputs! "exit code 3" s fail3)
(expect-build-error! "exit code 3, again" s (list fail3) "failed" 100)
(check-log! "exit code 3, again: the builder ran" "about to fail")

;; In the chroot sandbox the builder is process 1 of its own PID
;; namespace, which its own signals cannot kill: it goes on, and fails for
;; having made no output.
(define killed
  (sh-derivation s bb "killed" "echo about to die; kill -9 $$; echo still here"))
(expect-build-error! "builder signals itself" s (list killed) "failed" 1)
(check-log! "builder signals itself: it lives on" "still here")

;;; Missing outputs.

(define no-output (sh-derivation s bb "no-output" "echo making nothing"))
(expect-build-error! "no output" s (list no-output) "failed" 1)
(check-log! "no output: message"
            (string-append "builder for `" (drv-file no-output)
                           "' failed to produce output path `"
                           (derivation->output-path no-output) "'"))
(record-outputs! "no output" s no-output)

(define half
  (sh-derivation s bb "half" "echo out > $out"
                 #:outputs '("out" "lib")))
(expect-build-error! "one output of two" s (list half) "failed" 1)
(check-log! "one output of two: message" "failed to produce output path")
(record-outputs! "one output of two" s half)

;;; Dependencies.

(define dependent
  (sh-derivation s bb "dependent" "echo > $out"
                 #:inputs (list (derivation-input fail3))))
(expect-build-error! "failed dependency" s (list dependent) "failed" 100)
(check-log! "failed dependency: message"
            (string-append "cannot build derivation `" (drv-file dependent)
                           "': 1 dependencies couldn't be built"))

(define fine (sh-derivation s bb "fine" "echo fine > $out"))
(define fine2 (sh-derivation s bb "fine2" "echo fine > $out"))
;; Without keep-going, the first failure stops the others; which builds
;; ran before it depends on the order, so only the outcome is compared.
(let ((o (build! "without keep-going" s (list fail3 fine2))))
  (record! "without keep-going: outcome"
           (outcome->json o (const #t))))
(set-build-options s #:use-substitutes? #f #:verbosity 1 #:keep-going? #t)
(expect-build-error! "keep-going" s (list fail3 fine dependent) "failed" 100)
(record-outputs! "keep-going: the build that works" s fine)
(set-build-options s #:use-substitutes? #f #:verbosity 1)

;;; Builders that cannot run.

(define outside
  (derivation s "outside" "/bin/sh" '("-c" "echo > $out")
              #:system %system))
(expect-build-error! "builder outside the store" s (list outside) "failed" 100)

(define unknown-builtin
  (derivation s "unknown-builtin" "builtin:nope" '() #:system %system))
(expect-build-error! "unknown built-in builder" s (list unknown-builtin)
                     "failed" 100)
(check-log! "unknown built-in builder: message"
            "unsupported builtin function 'nope'")

(define odd-graph
  (sh-derivation s bb "odd-graph" "echo > $out"
                 #:env-vars '(("exportReferencesGraph" . "lonely"))))
(expect-build-error! "odd exportReferencesGraph" s (list odd-graph) "failed" 100)
(check-log! "odd exportReferencesGraph: message"
            "odd number of tokens in `exportReferencesGraph'")

(define other-system
  (derivation s "other-system" (string-append bb "/bin/sh")
              '("-c" "echo > $out")
              #:sources (list bb) #:system "mips64el-linux"))
;; Another system on the same kernel: the daemon tries the builder anyway
;; (binfmt_misc might run it), and this one is native.
(record! "another system, same kernel: outcome"
         (outcome->json (build! "another system, same kernel" s
                                (list other-system))
                        (const #t)))

(define other-kernel
  (derivation s "other-kernel" (string-append bb "/bin/sh")
              '("-c" "echo > $out")
              #:sources (list bb) #:system "i586-gnu"))
(expect-build-error! "another kernel" s (list other-kernel) "failed" 100)
(check-log! "another kernel: trace"
            (string-append "@ unsupported-platform " (drv-file other-kernel)
                           " i586-gnu"))

;;; Outputs the daemon refuses to register.

(define writable
  (sh-derivation s bb "writable" "echo x > $out; chmod 666 $out"))
(record! "world-writable output: outcome"
         (outcome->json (build! "world-writable output" s (list writable))
                        (const #t)))
(record-outputs! "world-writable output" s writable)

(define setuid
  (sh-derivation s bb "setuid"
                 "mkdir $out; echo x > $out/f; chmod 4755 $out/f; chmod 1777 $out"))
(record! "setuid and sticky bits: outcome"
         (outcome->json (build! "setuid and sticky bits" s (list setuid))
                        (const #t)))
(when (record-outputs! "setuid and sticky bits" s setuid)
  (record-files! "setuid and sticky bits: files"
                 (derivation->output-path setuid)))

;;; The session goes on.

(step-alive! "alive after failures" s #t)
(finish!)
